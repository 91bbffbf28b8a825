"""The MiniCPM checkpoints people download, as released on the Hugging Face Hub: one table.

Each entry gives the release's ``config.json`` (real dimensions and key set; LongRoPE factor lists are
abbreviated to their length, ``head_dim / 2``), its weight and tokenizer file layout, its chat format and the
licence its model card declares. ``check --preset`` takes its dimensions from here and the tests build tiny
stand-ins with the same keys and layout (tests/standins.py). docs/checkpoints.md gives the public source of
every fact and says which ones are not verified.
"""
from __future__ import annotations

from dataclasses import dataclass, field

AUTO_MAP = {
    "AutoConfig": "configuration_minicpm.MiniCPMConfig",
    "AutoModel": "modeling_minicpm.MiniCPMModel",
    "AutoModelForCausalLM": "modeling_minicpm.MiniCPMForCausalLM",
    "AutoModelForSeq2SeqLM": "modeling_minicpm.MiniCPMForCausalLM",
    "AutoModelForSequenceClassification": "modeling_minicpm.MiniCPMForSequenceClassification",
}
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
CODE_FILES = ("configuration_minicpm.py", "modeling_minicpm.py")
LONGROPE = "longrope"  # marks a rope_scaling whose factor lists the stand-in generator fills in


def _minicpm1(vocab, hidden, layers, heads, kv_heads, inter, dtype, max_pos=4096, **extra) -> dict:
    cfg = {
        "_name_or_path": "openbmb/CPM-2B", "architectures": ["MiniCPMForCausalLM"], "auto_map": AUTO_MAP,
        "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": hidden, "initializer_range": 0.1,
        "intermediate_size": inter, "max_position_embeddings": max_pos, "model_type": "minicpm",
        "num_attention_heads": heads, "num_hidden_layers": layers, "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-05, "rope_scaling": None, "torch_dtype": dtype, "transformers_version": "4.36.0",
        "use_cache": True, "vocab_size": vocab, "scale_emb": 12, "dim_model_base": 256, "scale_depth": 1.4,
    }
    cfg.update(extra)
    return cfg


def _minicpm4(vocab, hidden, layers, heads, kv_heads, inter, max_pos, tied, eps) -> dict:
    return {
        "architectures": ["MiniCPMForCausalLM"], "auto_map": {k: v for k, v in AUTO_MAP.items()
                                                              if k != "AutoModelForSeq2SeqLM"},
        "bos_token_id": 1, "eos_token_id": [2, 73440], "hidden_act": "silu", "hidden_size": hidden,
        "initializer_range": 0.1, "intermediate_size": inter, "max_position_embeddings": max_pos,
        "model_type": "minicpm", "num_attention_heads": heads, "num_hidden_layers": layers,
        "num_key_value_heads": kv_heads, "rms_norm_eps": eps,
        "rope_scaling": {"rope_type": LONGROPE, "long_factor": None, "short_factor": None,
                         "original_max_position_embeddings": max_pos},
        "torch_dtype": "bfloat16", "transformers_version": "4.46.3", "use_cache": True, "vocab_size": vocab,
        "scale_emb": 12, "dim_model_base": 256, "scale_depth": 1.4, "rope_theta": 10000.0,
        "tie_word_embeddings": tied,
    }


@dataclass(frozen=True)
class Release:
    repo: str
    family: str  # licence-registry family and the `check --preset` group
    config: dict
    weights: tuple[str, ...]  # weight file layout; "*" stands for the shard number
    chat: str  # "minicpm" (<用户>/<AI>), "chatml", "chatml_hybrid_thinking"
    license: str  # what the model card's front matter declares ("" when it declares none)
    extra_files: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        return self.repo.split("/")[1]

    @property
    def tied(self) -> bool:
        tie = self.config.get("tie_word_embeddings")
        return True if tie is None else bool(tie)  # the 1.x configs leave it out: OpenBMB's default is tied

    def preset(self) -> dict:
        """Dimensions for the device profile (devices/model_profile.py ``Arch`` fields)."""
        c = self.config
        return dict(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], num_hidden_layers=c["num_hidden_layers"],
                    num_attention_heads=c["num_attention_heads"], num_key_value_heads=c["num_key_value_heads"],
                    intermediate_size=c["intermediate_size"], tie_word_embeddings=self.tied,
                    max_position_embeddings=c["max_position_embeddings"])


_2B = dict(vocab=122753, hidden=2304, layers=40, heads=36, kv_heads=36, inter=5760)
RELEASES = {r.name: r for r in (
    Release("openbmb/MiniCPM-2B-sft-bf16", "minicpm-1", _minicpm1(**_2B, dtype="bfloat16"),
            ("pytorch_model.bin",), "minicpm", ""),
    Release("openbmb/MiniCPM-2B-dpo-bf16", "minicpm-1", _minicpm1(**_2B, dtype="bfloat16"),
            ("pytorch_model.bin",), "minicpm", ""),
    Release("openbmb/MiniCPM-2B-sft-fp32", "minicpm-1", _minicpm1(**_2B, dtype="float32"),
            ("pytorch_model-0000*-of-00002.bin", "pytorch_model.bin.index.json"), "minicpm", ""),
    Release("openbmb/MiniCPM-1B-sft-bf16", "minicpm-1",
            _minicpm1(vocab=73440, hidden=1536, layers=52, heads=24, kv_heads=8, inter=3840, dtype="bfloat16"),
            ("model.safetensors",), "minicpm", "apache-2.0"),
    Release("openbmb/MiniCPM-2B-128k", "minicpm-1",
            _minicpm1(**{**_2B, "vocab": 127660}, dtype="bfloat16", max_pos=131072, tie_word_embeddings=False),
            ("pytorch_model.bin",), "chatml", ""),
    Release("openbmb/MiniCPM4-0.5B", "minicpm4",
            _minicpm4(73448, 1024, 24, 16, 2, 4096, 32768, True, 1e-05), ("model.safetensors",), "chatml",
            "apache-2.0"),
    Release("openbmb/MiniCPM4-8B", "minicpm4",
            _minicpm4(73448, 4096, 32, 32, 2, 16384, 32768, False, 1e-06),
            ("model-0000*-of-00004.safetensors", "model.safetensors.index.json"), "chatml", "apache-2.0"),
    Release("openbmb/MiniCPM4.1-8B", "minicpm4",
            _minicpm4(73448, 4096, 32, 32, 2, 16384, 65536, False, 1e-06),
            ("model-0000*-of-00004.safetensors", "model.safetensors.index.json"), "chatml_hybrid_thinking",
            "apache-2.0"),
)}
