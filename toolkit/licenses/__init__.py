"""Model licences: what the terms of each model family allow, and the notices a build ships."""
from mcpm_mobile.licenses.notice import check_commercial, license_record, short_notice, write_notices
from mcpm_mobile.licenses.registry import detect, detect_dir, lookup, resolve, unknown_terms

__all__ = ["check_commercial", "detect", "detect_dir", "license_record", "lookup", "resolve", "short_notice",
           "unknown_terms", "write_notices"]
