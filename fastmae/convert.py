"""``fastmae convert SRC DST --to {fastmae,hf,timm}``: MAE weights between three layouts.

- ``fastmae``: the official MAE layout (fastmae's own and the released ``.pth`` files): a file
  holding ``{"model": state_dict}``, full (encoder + decoder) or encoder-only.
- ``hf``: a HuggingFace ``ViTMAEForPreTraining`` folder (``config.json`` + ``pytorch_model.bin``),
  or ``ViTMAEModel`` for an encoder-only source. q, k and v are separate Linear layers there (our
  ``qkv`` rows are [q | k | v]); LayerNorm is ``layernorm_before/after``; the encoder lives under
  ``vit.`` and the decoder under ``decoder.``.
- ``timm``: a timm ``VisionTransformer`` state dict: the encoder under the official names (timm has
  no MAE decoder, so a full source loses its decoder, and ``head.*`` is dropped on the way in).

LayerNorm epsilon: MAE trains with 1e-6; HF's ViTMAE config defaults to 1e-12, which changes the
outputs of real checkpoints by up to ~1e-2. Written HF configs carry 1e-6; an HF source whose config
says otherwise is converted with a warning (fastmae models always run with MAE's 1e-6), and the
value it had is kept in the output under ``hf_layer_norm_eps``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from fastmae.models.configs import LAYER_NORM_EPS, MODEL_CONFIGS, full_model_config

FORMATS = ("fastmae", "hf", "timm")
HF_CONFIG, HF_WEIGHTS, HF_SAFETENSORS = "config.json", "pytorch_model.bin", "model.safetensors"
ENCODER_PREFIXES = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")

# inside one transformer block: ours -> HF (qkv is split separately)
_BLOCK = {
    "norm1": "layernorm_before",
    "attn.proj": "attention.output.dense",
    "norm2": "layernorm_after",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
_QKV = ("query", "key", "value")
# outside the blocks: ours -> HF, relative to the encoder ("vit.") or the decoder ("decoder.") root
_ENCODER = {
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
_DECODER = {name: name for name in ("mask_token", "decoder_pos_embed", "decoder_embed.weight", "decoder_embed.bias",
                                    "decoder_norm.weight", "decoder_norm.bias", "decoder_pred.weight",
                                    "decoder_pred.bias")}
_BLOCK_KEY = re.compile(r"^(blocks|decoder_blocks)\.(\d+)\.(.+)\.(weight|bias)$")
_HF_BLOCK_KEY = re.compile(r"^(encoder\.layer|decoder\.decoder_layers)\.(\d+)\.(.+)\.(weight|bias)$")


# ------------------------------------------------------------------------------ layouts
def is_encoder_only(state: Mapping[str, torch.Tensor]) -> bool:
    return all(key.startswith(ENCODER_PREFIXES) for key in state)


def to_hf(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official/fastmae names -> HF ViTMAEForPreTraining names (ViTMAEModel names for an encoder-only state)."""
    root = "" if is_encoder_only(state) else "vit."
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = _BLOCK_KEY.match(key)
        if match:
            stack, index, part, kind = match.groups()
            prefix = f"{root}encoder.layer.{index}." if stack == "blocks" else f"decoder.decoder_layers.{index}."
            if part == "attn.qkv":
                for name, chunk in zip(_QKV, value.chunk(3, dim=0)):
                    out[f"{prefix}attention.attention.{name}.{kind}"] = chunk.clone()
            elif part in _BLOCK:
                out[f"{prefix}{_BLOCK[part]}.{kind}"] = value
            else:
                raise ValueError(f"{key}: not an MAE block parameter")
        elif key in _ENCODER:
            out[root + _ENCODER[key]] = value
        elif key in _DECODER:
            out["decoder." + _DECODER[key]] = value
        else:
            raise ValueError(f"{key}: not an MAE parameter (official layout expected)")
    return out


def from_hf(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF ViTMAEForPreTraining / ViTMAEModel names -> official/fastmae names (qkv re-joined)."""
    encoder = {hf: ours for ours, hf in _ENCODER.items()}
    decoder = {"decoder." + hf: ours for ours, hf in _DECODER.items()}
    block = {hf: ours for ours, hf in _BLOCK.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for hf_key, value in state.items():
        key = hf_key.removeprefix("vit.")
        match = _HF_BLOCK_KEY.match(key)
        if match:
            stack, index, part, kind = match.groups()
            prefix = f"blocks.{index}." if stack == "encoder.layer" else f"decoder_blocks.{index}."
            if part.startswith("attention.attention.") and part.rsplit(".", 1)[1] in _QKV:
                qkv.setdefault(f"{prefix}attn.qkv.{kind}", {})[part.rsplit(".", 1)[1]] = value
            elif part in block:
                out[f"{prefix}{block[part]}.{kind}"] = value
            else:
                raise ValueError(f"{hf_key}: not a ViTMAE layer parameter")
        elif key in encoder:
            out[encoder[key]] = value
        elif key in decoder:
            out[decoder[key]] = value
        else:
            raise ValueError(f"{hf_key}: not a ViTMAE parameter")
    for key, parts in qkv.items():
        if set(parts) != set(_QKV):
            raise ValueError(f"{key}: HF state has {sorted(parts)} of query/key/value")
        out[key] = torch.cat([parts[name] for name in _QKV], dim=0)
    return out


def to_timm(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """-> (timm VisionTransformer encoder state, dropped decoder keys)."""
    kept = {k: v for k, v in state.items() if k.startswith(ENCODER_PREFIXES)}
    return kept, sorted(set(state) - set(kept))


def from_timm(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """timm VisionTransformer state -> (official encoder-only state, dropped classifier keys)."""
    if "fc_norm.weight" in state and "norm.weight" not in state:
        raise ValueError("this timm model normalises the pooled features (fc_norm, global_pool='avg'): a fine-tuned "
                         "classifier, not an MAE encoder whose 'norm' runs on every token")
    dropped = sorted(k for k in state if k.startswith(("head.", "head_drop.", "fc_norm.")))
    kept = {k: v for k, v in state.items() if k not in dropped}
    unknown = sorted(k for k in kept if not k.startswith(ENCODER_PREFIXES))
    if unknown:
        raise ValueError(f"timm state has keys an MAE ViT encoder does not: {', '.join(unknown[:6])}")
    return kept, dropped


# ------------------------------------------------------------------------------ model sizes
def infer_sizes(state: Mapping[str, torch.Tensor]) -> dict[str, object]:
    """The constructor arguments that the weights' shapes fix (heads and image size are not among them)."""
    weight = state["patch_embed.proj.weight"]
    sizes: dict[str, object] = {
        "embed_dim": weight.shape[0], "in_chans": weight.shape[1], "patch_size": weight.shape[2],
        "depth": 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks.")),
    }
    sizes["mlp_ratio"] = state["blocks.0.mlp.fc1.weight"].shape[0] / sizes["embed_dim"]
    if "decoder_embed.weight" in state:
        sizes["decoder_embed_dim"] = state["decoder_embed.weight"].shape[0]
        sizes["decoder_depth"] = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("decoder_blocks."))
    return sizes


def named_config(name: str, state: Mapping[str, torch.Tensor], img_size: object = None) -> dict[str, object]:
    """The full config of model ``name``, checked against the weights' shapes."""
    config = full_model_config(name, **({"img_size": img_size} if img_size else {}))
    for key, value in infer_sizes(state).items():
        if config[key] != value:
            raise ValueError(f"the weights have {key} {value}, model {name} has {config[key]}: pass the right --model")
    return config


def name_for(config: Mapping[str, object]) -> str | None:
    """The fastmae model name whose architecture is ``config`` (None if none is)."""
    for name in MODEL_CONFIGS:
        candidate = full_model_config(name)
        if all(candidate[k] == config[k] for k in ("patch_size", "embed_dim", "depth", "num_heads", "decoder_embed_dim",
                                                  "decoder_depth", "decoder_num_heads", "mlp_ratio", "in_chans")):
            return name
    return None


def hf_config(config: Mapping[str, object], *, encoder_only: bool) -> dict[str, object]:
    """A ViTMAE ``config.json`` for a model config (LayerNorm eps carried: MAE's 1e-6)."""
    size = config["img_size"]
    image_size = size if isinstance(size, int) else (size[0] if size[0] == size[1] else list(size))
    return {
        "architectures": ["ViTMAEModel" if encoder_only else "ViTMAEForPreTraining"],
        "model_type": "vit_mae",
        "hidden_size": config["embed_dim"], "num_hidden_layers": config["depth"],
        "num_attention_heads": config["num_heads"],
        "intermediate_size": int(config["embed_dim"] * config["mlp_ratio"]),
        "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02, "layer_norm_eps": LAYER_NORM_EPS,
        "image_size": image_size, "patch_size": config["patch_size"], "num_channels": config["in_chans"],
        "qkv_bias": True,
        "decoder_num_attention_heads": config["decoder_num_heads"], "decoder_hidden_size": config["decoder_embed_dim"],
        "decoder_num_hidden_layers": config["decoder_depth"],
        "decoder_intermediate_size": int(config["decoder_embed_dim"] * config["mlp_ratio"]),
        "mask_ratio": 0.75, "norm_pix_loss": bool(config["norm_pix_loss"]), "torch_dtype": "float32",
    }


def config_from_hf(hf: Mapping[str, object]) -> dict[str, object]:
    """fastmae constructor arguments from a ViTMAE ``config.json`` (HF's defaults where keys are absent)."""
    if hf.get("hidden_act", "gelu") != "gelu" or not hf.get("qkv_bias", True):
        raise ValueError("HF config: only hidden_act 'gelu' with qkv_bias true is an MAE")
    size = hf.get("image_size", 224)
    hidden = hf.get("hidden_size", 768)
    mlp_ratio = hf.get("intermediate_size", 3072) / hidden
    decoder = hf.get("decoder_hidden_size", 512)
    if hf.get("decoder_intermediate_size", 2048) / decoder != mlp_ratio:
        raise ValueError("HF config: encoder and decoder MLP ratios differ; fastmae models share one")
    return {"img_size": size if isinstance(size, int) else tuple(size), "patch_size": hf.get("patch_size", 16),
            "in_chans": hf.get("num_channels", 3), "embed_dim": hidden, "depth": hf.get("num_hidden_layers", 12),
            "num_heads": hf.get("num_attention_heads", 12), "decoder_embed_dim": decoder,
            "decoder_depth": hf.get("decoder_num_hidden_layers", 8),
            "decoder_num_heads": hf.get("decoder_num_attention_heads", 16), "mlp_ratio": mlp_ratio,
            "norm_pix_loss": bool(hf.get("norm_pix_loss", False))}


# ------------------------------------------------------------------------------ files
def _saved_args(checkpoint: Mapping[str, object]) -> dict[str, object]:
    saved = checkpoint.get("args") or {}
    return vars(saved) if isinstance(saved, argparse.Namespace) else dict(saved)


def read_hf_folder(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    config_path = folder / HF_CONFIG
    if not config_path.is_file():
        raise ValueError(f"{folder}: no {HF_CONFIG} (an HF model folder expected)")
    hf = json.loads(config_path.read_text())
    if (folder / HF_WEIGHTS).is_file():
        state = torch.load(folder / HF_WEIGHTS, map_location="cpu", weights_only=True)
    elif (folder / HF_SAFETENSORS).is_file():
        try:
            from safetensors.torch import load_file
        except ImportError as error:
            raise ValueError(f"{folder}: reading {HF_SAFETENSORS} needs safetensors (pip install safetensors)") \
                from error
        state = load_file(folder / HF_SAFETENSORS)
    else:
        raise ValueError(f"{folder}: neither {HF_WEIGHTS} nor {HF_SAFETENSORS}")
    return state, hf


def detect_format(source: Path) -> str:
    if source.is_dir():
        return "hf"
    return "fastmae"  # a timm encoder state has the official names: reading it as fastmae is the same


def convert(source: str | Path, destination: str | Path, to: str, *, source_format: str | None = None,
            model: str | None = None) -> list[str]:
    """Convert the weights at ``source`` into ``destination`` in layout ``to``; returns notes for the user."""
    from fastmae.train.checkpoint import load_checkpoint, model_state

    source, destination = Path(source), Path(destination)
    if to not in FORMATS:
        raise ValueError(f"--to must be one of {', '.join(FORMATS)}, got {to!r}")
    source_format = source_format or detect_format(source)
    notes: list[str] = []
    img_size = None
    if source_format == "hf":
        hf_state, hf = read_hf_folder(source)
        state = from_hf(hf_state)
        config = config_from_hf(hf)
        img_size = config["img_size"]
        model = model or name_for(config)
        eps = float(hf.get("layer_norm_eps", 1e-12))
        if eps != LAYER_NORM_EPS:
            notes.append(f"warning: the HF config has layer_norm_eps {eps:g}; MAE (and every fastmae model) uses "
                         f"{LAYER_NORM_EPS:g}, the value the released weights were trained with; outputs differ "
                         f"from what this HF model computed by up to ~1e-2")
        if model is None:
            notes.append("warning: no fastmae model has this architecture; the weights are converted, but loading "
                         "them needs a model built with the same sizes")
        saved = {"model": model, "input_size": img_size if isinstance(img_size, int) else None,
                 "norm_pix_loss": config["norm_pix_loss"]}
        meta: dict[str, object] = {"args": saved, "hf_layer_norm_eps": eps}
    elif source_format in ("fastmae", "timm"):
        checkpoint = load_checkpoint(source)
        state = model_state(checkpoint)
        if source_format == "timm":
            state, dropped = from_timm(state)
            if dropped:
                notes.append(f"dropped the classifier keys {', '.join(dropped)}")
        saved = _saved_args(checkpoint)
        model = model or saved.get("model")
        img_size = saved.get("input_size")
        meta = {"args": {k: saved[k] for k in ("model", "input_size", "norm_pix_loss") if k in saved}}
    else:
        raise ValueError(f"--from must be one of {', '.join(FORMATS)}, got {source_format!r}")

    if to == "fastmae":
        _save(destination, {"model": state, **meta})
    elif to == "timm":
        encoder, dropped = to_timm(state)
        if dropped:
            notes.append(f"timm's ViT has no MAE decoder: left out {len(dropped)} decoder tensors")
        _save(destination, encoder)
    else:
        if not model:
            raise ValueError("the source does not name its model (heads are not in the weights): pass --model")
        config = named_config(model, state, img_size)
        config["norm_pix_loss"] = bool(meta.get("args", {}).get("norm_pix_loss", False))
        destination.mkdir(parents=True, exist_ok=True)
        (destination / HF_CONFIG).write_text(json.dumps(hf_config(config, encoder_only=is_encoder_only(state)),
                                                        indent=2) + "\n")
        _save(destination / HF_WEIGHTS, to_hf(state))
    return notes


def _save(path: Path, obj: object) -> None:
    from fastmae.train.checkpoint import atomic_save

    atomic_save(obj, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastmae convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a .pth file (fastmae/official or timm) or an HF model folder")
    parser.add_argument("destination", help="the .pth file (fastmae, timm) or the folder (hf) to write")
    parser.add_argument("--to", required=True, choices=FORMATS, help="layout to write")
    parser.add_argument("--from", dest="source_format", choices=FORMATS, default=None,
                        help="layout of SOURCE (default: hf for a folder, else fastmae)")
    parser.add_argument("--model", default=None,
                        help="fastmae model name (default: from the checkpoint's args or the HF config)")
    args = parser.parse_args(argv)
    try:
        notes = convert(args.source, args.destination, args.to, source_format=args.source_format, model=args.model)
    except (ValueError, FileNotFoundError, KeyError) as error:
        print(f"fastmae convert: error: {error}", file=sys.stderr)
        return 2
    for note in notes:
        print(note, file=sys.stderr if note.startswith("warning") else sys.stdout)
    print(f"wrote {args.destination} ({args.to} layout)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
