"""Versioned device data (JSON): SoCs, phones with their app-memory limits, and measured decode speeds.

A package only so that the JSON files ship in wheels (package data is matched per package folder).
"""
