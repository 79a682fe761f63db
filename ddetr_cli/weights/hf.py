"""Hugging Face transformers folders (config.json + model.safetensors / pytorch_model.bin).

Two key layouts exist on disk and both are read:

- the Hub's, written by transformers 4.x (and still by 5.x `save_pretrained`): the backbone
  under `model.backbone.conv_encoder.model.*`, `fc1`/`fc2` and `self_attn.out_proj` in the layers;
- transformers 5.x's in-memory names: `model.backbone.model.*`, `mlp.fc1`/`mlp.fc2`,
  `self_attn.o_proj`.

Two backbones exist too, and both are read and written: timm's ResNet (torchvision's module
names, `use_timm_backbone: true`), which transformers builds only with timm installed, and
transformers' own ResNet (`backbone_config.model_type: resnet`, `embedder.*`/`encoder.*` keys),
which needs nothing but transformers. Folders are written with transformers' own ResNet, so that
`from_pretrained` needs no timm, except DC5 models (`dilation`), which transformers builds only
from timm's.

Every rename is one row of `KEY_RULES` (ddetr pattern, Hub pattern) or, for transformers'
ResNet, of `RESNET_RULES`, used in both directions; the only rule that is not a rename is the
decoder self-attention, whose packed `in_proj_weight`/`in_proj_bias` (nn.MultiheadAttention)
are transformers' `q_proj`, `k_proj`, `v_proj` in that order.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ddetr_cli.errors import DdetrError, one_line
from ddetr_cli.extras import require
from ddetr_cli.files import atomic_folder
from ddetr_cli.weights.sniff import sniff

__all__ = [
    "BACKBONES",
    "KEY_RULES",
    "RESNET_RULES",
    "backbone_layout",
    "config_to_recipe",
    "download",
    "hf_to_ddetr",
    "ddetr_to_hf",
    "read_hf_folder",
    "recipe_to_config",
    "refusal",
    "write_hf_folder",
]

# (ddetr pattern, Hub-layout pattern). `{i}`, `{j}` stand for a layer or head index, `{p}` for a
# parameter name (weight, bias, running_mean, ...), `{rest}` for any dotted tail; `{i+1}` is the
# index one more than `{i}` on the other side. Rows are tried in order; the first whose pattern
# matches the whole key wins.
KEY_RULES: tuple[tuple[str, str], ...] = (
    # backbone: the timm ResNet has torchvision's module names
    ("backbone.0.body.{rest}", "model.backbone.conv_encoder.model.{rest}"),
    # feature projections, level embedding, queries
    ("input_proj.{i}.{j}.{p}", "model.input_proj.{i}.{j}.{p}"),
    ("transformer.level_embed", "model.level_embed"),
    ("query_embed.weight", "model.query_position_embeddings.weight"),
    ("transformer.reference_points.{p}", "model.reference_points.{p}"),
    # two-stage proposal heads
    ("transformer.enc_output.{p}", "model.enc_output.{p}"),
    ("transformer.enc_output_norm.{p}", "model.enc_output_norm.{p}"),
    ("transformer.pos_trans.{p}", "model.pos_trans.{p}"),
    ("transformer.pos_trans_norm.{p}", "model.pos_trans_norm.{p}"),
    # encoder layers: deformable self-attention, norm1, FFN, norm2
    (
        "transformer.encoder.layers.{i}.self_attn.{rest}",
        "model.encoder.layers.{i}.self_attn.{rest}",
    ),
    (
        "transformer.encoder.layers.{i}.norm1.{p}",
        "model.encoder.layers.{i}.self_attn_layer_norm.{p}",
    ),
    ("transformer.encoder.layers.{i}.linear1.{p}", "model.encoder.layers.{i}.fc1.{p}"),
    ("transformer.encoder.layers.{i}.linear2.{p}", "model.encoder.layers.{i}.fc2.{p}"),
    ("transformer.encoder.layers.{i}.norm2.{p}", "model.encoder.layers.{i}.final_layer_norm.{p}"),
    # decoder layers: self-attention (+ norm2), deformable cross-attention (+ norm1), FFN (+ norm3)
    (
        "transformer.decoder.layers.{i}.self_attn.out_proj.{p}",
        "model.decoder.layers.{i}.self_attn.out_proj.{p}",
    ),
    (
        "transformer.decoder.layers.{i}.norm2.{p}",
        "model.decoder.layers.{i}.self_attn_layer_norm.{p}",
    ),
    (
        "transformer.decoder.layers.{i}.cross_attn.{rest}",
        "model.decoder.layers.{i}.encoder_attn.{rest}",
    ),
    (
        "transformer.decoder.layers.{i}.norm1.{p}",
        "model.decoder.layers.{i}.encoder_attn_layer_norm.{p}",
    ),
    ("transformer.decoder.layers.{i}.linear1.{p}", "model.decoder.layers.{i}.fc1.{p}"),
    ("transformer.decoder.layers.{i}.linear2.{p}", "model.decoder.layers.{i}.fc2.{p}"),
    ("transformer.decoder.layers.{i}.norm3.{p}", "model.decoder.layers.{i}.final_layer_norm.{p}"),
    # heads; with box refinement (and two-stage) the decoder holds them too
    ("class_embed.{i}.{p}", "class_embed.{i}.{p}"),
    ("bbox_embed.{i}.layers.{j}.{p}", "bbox_embed.{i}.layers.{j}.{p}"),
    ("transformer.decoder.class_embed.{i}.{p}", "model.decoder.class_embed.{i}.{p}"),
    (
        "transformer.decoder.bbox_embed.{i}.layers.{j}.{p}",
        "model.decoder.bbox_embed.{i}.layers.{j}.{p}",
    ),
)

# The decoder self-attention: ddetr's packed projection <-> transformers' three.
_PACKED = "transformer.decoder.layers.{i}.self_attn.in_proj_{p}"
_SPLIT = "model.decoder.layers.{i}.self_attn.{qkv}_proj.{p}"
_QKV = ("q", "k", "v")

# transformers' own ResNet (ResNetBackbone) under the Hub's backbone prefix, instead of timm's
# (KEY_RULES' first row). Stage i block j is torchvision's `layer{i+1}.{j}`; its convolution k
# is `conv{k+1}` with `bn{k+1}`; the shortcut is `downsample.0` and `.1`.
_RESNET = "model.backbone.conv_encoder.model."
RESNET_RULES: tuple[tuple[str, str], ...] = (
    ("backbone.0.body.conv1.weight", _RESNET + "embedder.embedder.convolution.weight"),
    ("backbone.0.body.bn1.{p}", _RESNET + "embedder.embedder.normalization.{p}"),
    (
        "backbone.0.body.layer{i+1}.{j}.conv{k+1}.weight",
        _RESNET + "encoder.stages.{i}.layers.{j}.layer.{k}.convolution.weight",
    ),
    (
        "backbone.0.body.layer{i+1}.{j}.bn{k+1}.{p}",
        _RESNET + "encoder.stages.{i}.layers.{j}.layer.{k}.normalization.{p}",
    ),
    (
        "backbone.0.body.layer{i+1}.{j}.downsample.0.weight",
        _RESNET + "encoder.stages.{i}.layers.{j}.shortcut.convolution.weight",
    ),
    (
        "backbone.0.body.layer{i+1}.{j}.downsample.1.{p}",
        _RESNET + "encoder.stages.{i}.layers.{j}.shortcut.normalization.{p}",
    ),
)
BACKBONES = ("resnet", "timm")  # the backbone layouts: transformers' own ResNet, timm's

# transformers 5.x in-memory names -> the Hub's (applied to a key before KEY_RULES).
_V5_TO_HUB: tuple[tuple[str, str], ...] = (
    (r"^model\.backbone\.model\.", "model.backbone.conv_encoder.model."),
    (r"\.layers\.(\d+)\.mlp\.fc([12])\.", r".layers.\1.fc\2."),
    (r"\.self_attn\.o_proj\.", ".self_attn.out_proj."),
)
_PLACEHOLDER = re.compile(r"\{(\w+)(?:\+(\d+))?\}")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_RESNET_DEPTHS = {(3, 4, 6, 3): "resnet50", (3, 4, 23, 3): "resnet101"}
_RESNETS = ("resnet50", "resnet101")


_Rule = tuple[re.Pattern[str], dict[str, int], str]


def _compile(pattern: str) -> tuple[re.Pattern[str], dict[str, int]]:
    """'a.{i}.{rest}' -> a regex with one named group per placeholder, and the offsets of
    placeholders written `{i+1}` (what their captured number is above the index)."""
    parts, offsets, pos = [], {}, 0
    for m in _PLACEHOLDER.finditer(pattern):
        parts.append(re.escape(pattern[pos : m.start()]))
        name = m.group(1)
        if m.group(2):
            offsets[name] = int(m.group(2))
        body = {"p": r"[^.]+", "qkv": "[qkv]", "rest": r".+"}.get(name, r"\d+")
        parts.append(f"(?P<{name}>{body})")
        pos = m.end()
    parts.append(re.escape(pattern[pos:]))
    return re.compile("".join(parts) + r"\Z"), offsets


def _rules(table: tuple[tuple[str, str], ...], backward: bool) -> list[_Rule]:
    """(regex of one side, its offsets, template of the other side) for each row."""
    rules = []
    for ddetr, hub in table:
        source, target = (hub, ddetr) if backward else (ddetr, hub)
        rules.append((*_compile(source), target))
    return rules


def _fill(template: str, values: dict[str, str]) -> str:
    def value(m: re.Match[str]) -> str:
        return str(int(values[m.group(1)]) + int(m.group(2))) if m.group(2) else values[m.group(1)]

    return _PLACEHOLDER.sub(value, template)


_FORWARD = {"timm": _rules(KEY_RULES, False), "resnet": _rules(RESNET_RULES + KEY_RULES, False)}
_BACKWARD = {"timm": _rules(KEY_RULES, True), "resnet": _rules(RESNET_RULES + KEY_RULES, True)}
_PACKED_RE = _compile(_PACKED)[0]
_SPLIT_RE = _compile(_SPLIT)[0]


def _rename(key: str, rules: list[_Rule]) -> str | None:
    for pattern, offsets, target in rules:
        m = pattern.match(key)
        if m:
            values = {
                k: str(int(v) - offsets[k]) if k in offsets else v for k, v in m.groupdict().items()
            }
            return _fill(target, values)
    return None


def _hub_key(key: str) -> str:
    """Any stored transformers key in the Hub's (4.x) names."""
    for pattern, repl in _V5_TO_HUB:
        key = re.sub(pattern, repl, key)
    return key


def hf_to_ddetr(
    state_dict: dict[str, Tensor],
    model: dict[str, Any] | None = None,
    resnet_backbone: bool = False,
    source: str = "weights",
) -> dict[str, Tensor]:
    """transformers tensors (either layout) -> ddetr's key names. Unknown keys are an error.

    With `model` (the recipe's model section), heads transformers ties and may store once
    (`class_embed.N` to `class_embed.0` without refinement, the decoder's copies with it) are
    filled in from their twin."""
    out: dict[str, Tensor] = {}
    packed: dict[tuple[str, str], dict[str, Tensor]] = {}
    unknown = []
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        hub = _hub_key(key)
        m = _SPLIT_RE.match(hub)
        if m:
            packed.setdefault((m["i"], m["p"]), {})[m["qkv"]] = value
            continue
        name = _rename(hub, _BACKWARD["resnet" if resnet_backbone else "timm"])
        if name is None:
            unknown.append(key)
        else:
            out[name] = value
    if unknown:
        more = f" (+{len(unknown) - 3} more)" if len(unknown) > 3 else ""
        raise DdetrError(
            f"{source}: {len(unknown)} tensors that are not Deformable DETR's: "
            f"{', '.join(unknown[:3])}{more}"
        )
    for (i, p), parts in packed.items():
        if set(parts) != set(_QKV):
            missing = ", ".join(f"{q}_proj" for q in _QKV if q not in parts)
            raise DdetrError(f"{source}: decoder layer {i} self-attention lacks {missing}.{p}")
        out[_PACKED.format(i=i, p=p)] = torch.cat([parts[q] for q in _QKV], 0)
    _fill_tied_heads(out, model)
    return out


def _fill_tied_heads(sd: dict[str, Tensor], model: dict[str, Any] | None) -> None:
    """Add the head copies transformers ties and may store only once:

    - with box refinement the decoder's `bbox_embed` is the model's (and with two-stage its
      `class_embed` too): either copy stands for both;
    - an index stored nowhere is index 0: without refinement the head is one shared module, and
      transformers 5.x also ties (and saves once) the class heads of refinement without
      two-stage."""
    if model is None:
        return
    num_pred = model["dec_layers"] + (1 if model["two_stage"] else 0)
    twins = ["bbox_embed."] if model["with_box_refine"] else []
    if model["two_stage"]:
        twins.append("class_embed.")

    def fill_twins() -> None:
        for head in twins:
            for key in [k for k in sd if k.startswith((head, f"transformer.decoder.{head}"))]:
                plain = key.removeprefix("transformer.decoder.")
                sd.setdefault(plain, sd[key])
                sd.setdefault(f"transformer.decoder.{plain}", sd[key])

    fill_twins()
    for key in [k for k in sd if k.startswith(("class_embed.0.", "bbox_embed.0."))]:
        for n in range(1, num_pred):
            sd.setdefault(key.replace(".0.", f".{n}.", 1), sd[key])
    fill_twins()


def ddetr_to_hf(state_dict: dict[str, Tensor], backbone: str = "resnet") -> dict[str, Tensor]:
    """ddetr tensors -> the Hub's key names (every key, shared heads written once per index),
    the backbone as transformers' own ResNet (`backbone="resnet"`) or timm's ("timm")."""
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, not {backbone!r}")
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        m = _PACKED_RE.match(key)
        if m:
            for q, part in zip(_QKV, value.chunk(3, 0), strict=True):
                out[_SPLIT.format(i=m["i"], p=m["p"], qkv=q)] = part
            continue
        name = _rename(key, _FORWARD[backbone])
        if name is None:
            raise DdetrError(f"no transformers name for ddetr tensor {key}")
        out[name] = value
    return out


# ---------------------------------------------------------------- config.json <-> recipe


def _backbone_of(config: dict[str, Any], source: str) -> tuple[str, bool]:
    """(resnet50 | resnet101, whether the tensors use transformers' ResNet names)."""
    sub = config.get("backbone_config")
    if isinstance(sub, dict) and sub.get("model_type") not in (None, "timm_backbone"):
        kind = sub.get("model_type")
        depths = tuple(sub.get("depths") or ())
        name = _RESNET_DEPTHS.get(depths)
        if kind != "resnet" or name is None or sub.get("layer_type", "bottleneck") != "bottleneck":
            what = f"{kind} depths {list(depths)}" if kind == "resnet" else repr(kind)
            raise DdetrError(
                f"{source}: backbone {what} is not supported; ddetr runs ResNet-50 and ResNet-101"
            )
        if sub.get("downsample_in_bottleneck") or sub.get("downsample_in_first_stage"):
            raise DdetrError(f"{source}: a ResNet with its stride in the 1x1 conv is not supported")
        return name, True
    if isinstance(sub, dict):
        name = sub.get("backbone")
    elif config.get("use_timm_backbone", True) is False:
        raise DdetrError(f"{source}: use_timm_backbone is false but there is no backbone_config")
    else:
        name = config.get("backbone") or "resnet50"
    if name not in _RESNETS:
        raise DdetrError(
            f"{source}: backbone {name!r} is not supported; ddetr runs resnet50 and resnet101"
        )
    return name, False


def config_to_recipe(config: dict[str, Any], source: str = "config.json") -> tuple[dict, bool]:
    """A transformers Deformable DETR config -> (recipe `model` values, whether the backbone
    tensors use transformers' ResNet names)."""
    kind = config.get("model_type")
    if kind != "deformable_detr":
        raise DdetrError(f"{source}: model_type {kind!r} is not 'deformable_detr'")
    backbone, resnet_keys = _backbone_of(config, source)

    def get(key: str, default: Any) -> Any:
        value = config.get(key)
        return default if value is None else value

    for key, expected in (("activation_function", "relu"), ("position_embedding_type", "sine")):
        if get(key, expected) != expected:
            raise DdetrError(
                f"{source}: {key} {config[key]!r} is not supported (only {expected!r})"
            )
    if get("num_channels", 3) != 3:
        raise DdetrError(f"{source}: num_channels {config['num_channels']} is not supported (3)")
    pairs = (
        ("encoder_ffn_dim", "decoder_ffn_dim"),
        ("encoder_attention_heads", "decoder_attention_heads"),
    )
    for enc, dec in pairs:
        if get(enc, 1024 if "ffn" in enc else 8) != get(dec, 1024 if "ffn" in dec else 8):
            raise DdetrError(f"{source}: {enc} and {dec} differ; ddetr needs them equal")
    two_stage = bool(get("two_stage", False))
    labels = config.get("id2label") or {}
    try:
        ids = {int(k): str(v) for k, v in labels.items()}
    except (TypeError, ValueError):
        raise DdetrError(f"{source}: id2label keys must be integers") from None
    if ids and min(ids) < 0:
        raise DdetrError(f"{source}: id2label has a negative id")
    num_classes = max(ids) + 1 if ids else int(get("num_labels", 91))
    dilation = bool(get("dilation", False))
    sub = config.get("backbone_config")
    if isinstance(sub, dict) and sub.get("output_stride") == 16:
        dilation = True
    model: dict[str, Any] = {
        "backbone": backbone,
        "dilation": dilation,
        "num_classes": num_classes,
        "class_names": [ids.get(i, "N/A") for i in range(num_classes)] if ids else None,
        "num_feature_levels": int(get("num_feature_levels", 4)),
        "hidden_dim": int(get("d_model", 256)),
        "nheads": int(get("encoder_attention_heads", 8)),
        "enc_layers": int(get("encoder_layers", 6)),
        "dec_layers": int(get("decoder_layers", 6)),
        "dim_feedforward": int(get("encoder_ffn_dim", 1024)),
        "dropout": float(get("dropout", 0.1)),
        "num_queries": int(
            get("two_stage_num_proposals", 300) if two_stage else get("num_queries", 300)
        ),
        "enc_n_points": int(get("encoder_n_points", 4)),
        "dec_n_points": int(get("decoder_n_points", 4)),
        "with_box_refine": bool(get("with_box_refine", False)),
        "two_stage": two_stage,
        "aux_loss": True,
    }
    return model, resnet_keys


def refusal(model: dict[str, Any]) -> str | None:
    """Why a model cannot be written as a transformers folder (None: it can)."""
    backbone = model["backbone"]
    if backbone not in _RESNETS:
        what = " (the shapes demo's small CNN)" if backbone == "convnet" else ""
        return (
            f"--to hf takes models with a resnet50 or resnet101 backbone, the only ones "
            f"transformers' Deformable DETR runs; this one has {backbone}{what} (keep it as a "
            "ddetr checkpoint, or ddetr export it to ONNX)"
        )
    if model["num_feature_levels"] == 2:
        return "transformers' Deformable DETR takes 1 or at least 3 feature levels, not 2"
    return None


def backbone_layout(model: dict[str, Any]) -> str:
    """How a model's backbone is written: transformers' own ResNet ("resnet"), which loads
    without timm, unless it is DC5 (`dilation`), which transformers builds from timm only."""
    return "timm" if model["dilation"] else "resnet"


def _backbone_config(model: dict[str, Any]) -> dict[str, Any]:
    """The config.json keys that choose the backbone (never downloading weights)."""
    common = {"use_pretrained_backbone": False, "backbone_kwargs": None}
    if backbone_layout(model) == "timm":
        return {
            "use_timm_backbone": True,
            "backbone": model["backbone"],
            "backbone_config": None,
            **common,
        }
    depths = next(list(d) for d, name in _RESNET_DEPTHS.items() if name == model["backbone"])
    stages = [2, 3, 4] if model["num_feature_levels"] > 1 else [4]  # as transformers takes them
    resnet = {
        "model_type": "resnet",
        "num_channels": 3,
        "embedding_size": 64,
        "hidden_sizes": [256, 512, 1024, 2048],
        "depths": depths,
        "layer_type": "bottleneck",
        "hidden_act": "relu",
        "downsample_in_first_stage": False,
        "downsample_in_bottleneck": False,
        "out_features": [f"stage{i}" for i in stages],
        "out_indices": stages,
    }
    return {"use_timm_backbone": False, "backbone": None, "backbone_config": resnet, **common}


def recipe_to_config(model: dict[str, Any]) -> dict[str, Any]:
    """Recipe `model` values -> a config.json in the Hub's style: transformers' own ResNet
    backbone (no timm; timm's for DC5), no download."""
    problem = refusal(model)
    if problem:
        raise DdetrError(problem)
    names = model.get("class_names") or [f"class_{i}" for i in range(model["num_classes"])]
    id2label = {str(i): name for i, name in enumerate(names)}
    label2id: dict[str, int] = {}
    for i, name in enumerate(names):
        label2id.setdefault(name, i)
    from ddetr_cli import __version__

    return {
        "architectures": ["DeformableDetrForObjectDetection"],
        "model_type": "deformable_detr",
        **_backbone_config(model),
        "num_channels": 3,
        "dilation": bool(model["dilation"]),
        "d_model": model["hidden_dim"],
        "encoder_layers": model["enc_layers"],
        "decoder_layers": model["dec_layers"],
        "encoder_attention_heads": model["nheads"],
        "decoder_attention_heads": model["nheads"],
        "encoder_ffn_dim": model["dim_feedforward"],
        "decoder_ffn_dim": model["dim_feedforward"],
        "encoder_n_points": model["enc_n_points"],
        "decoder_n_points": model["dec_n_points"],
        "num_feature_levels": model["num_feature_levels"],
        "num_queries": model["num_queries"],
        "two_stage_num_proposals": model["num_queries"],
        "with_box_refine": bool(model["with_box_refine"]),
        "two_stage": bool(model["two_stage"]),
        "dropout": model["dropout"],
        "activation_function": "relu",
        "position_embedding_type": "sine",
        "auxiliary_loss": False,
        "return_intermediate": True,
        "is_encoder_decoder": True,
        "id2label": id2label,
        "label2id": label2id,
        "ddetr_version": __version__,
    }


# ---------------------------------------------------------------- folders


def _read_tensors(folder: Path) -> dict[str, Tensor]:
    st, bin_ = (folder / name for name in _WEIGHT_FILES)
    if st.is_file():
        kind = sniff(st)
        if kind.reader != "safetensors":
            raise DdetrError(f"{st} is {kind.what}, not a safetensors file")
        try:
            return load_file(str(st), device="cpu")
        except Exception as exc:  # the library's own error types vary between versions
            raise DdetrError(f"{st} is not a readable safetensors file ({one_line(exc)})") from exc
    if bin_.is_file():
        kind = sniff(bin_)
        if kind.reader != "checkpoint":  # torch.load fails on these with a traceback
            raise DdetrError(f"{bin_} is {kind.what}, not PyTorch weights")
        try:
            data = torch.load(bin_, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise DdetrError(
                f"{bin_} is not a readable PyTorch weights file ({one_line(exc)})"
            ) from exc
        if not isinstance(data, dict) or not all(isinstance(v, Tensor) for v in data.values()):
            raise DdetrError(f"{bin_} is not a state dict of tensors")
        return data
    if any(folder.glob("*.safetensors.index.json")) or any(folder.glob("*.bin.index.json")):
        raise DdetrError(f"{folder}: sharded weights are not supported (one file expected)")
    raise DdetrError(f"{folder} has no weights: neither {' nor '.join(_WEIGHT_FILES)}")


def read_hf_folder(folder: str | Path) -> dict[str, Any]:
    """A transformers Deformable DETR folder -> {"model": ddetr state dict, "recipe": {"model"}}."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise DdetrError(f"{folder} is not a transformers model folder: no config.json")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DdetrError(f"{config_path}: not a readable JSON file ({exc})") from None
    if not isinstance(config, dict):
        raise DdetrError(f"{config_path}: expected a JSON object")
    model, resnet_keys = config_to_recipe(config, str(config_path))
    tensors = _read_tensors(folder)
    state_dict = hf_to_ddetr(tensors, model, resnet_keys, str(folder))
    head = state_dict.get("class_embed.0.weight")
    if head is not None and head.shape[0] != model["num_classes"]:
        # transformers sizes the head by len(id2label): ids with gaps leave it shorter
        names = model["class_names"] or []
        if len(names) > head.shape[0] and any(n != "N/A" for n in names[head.shape[0] :]):
            raise DdetrError(
                f"{config_path}: id2label names {len(names)} classes but the class head has "
                f"{head.shape[0]}"
            )
        model["num_classes"] = int(head.shape[0])
        if model["class_names"] is not None:
            names = names[: head.shape[0]]
            model["class_names"] = names + ["N/A"] * (head.shape[0] - len(names))
    return {"model": state_dict, "recipe": {"model": model}, "source": "hf"}


def write_hf_folder(
    state_dict: dict[str, Tensor], recipe: dict[str, Any], folder: str | Path
) -> Path:
    """Write config.json + model.safetensors (Hub layout) into `folder`, replacing it whole.

    Written into a temporary sibling first and renamed, so a failure never leaves half a
    folder; an existing folder that is not a transformers folder is never replaced."""
    folder = Path(folder)
    if folder.exists() and not (folder.is_dir() and (folder / "config.json").is_file()):
        if not folder.is_dir() or any(folder.iterdir()):
            raise DdetrError(f"{folder} exists and is not a transformers folder; not replacing it")
    config = recipe_to_config(recipe["model"])
    dtypes = {v.dtype for v in state_dict.values() if v.is_floating_point()}
    if len(dtypes) == 1:
        config["torch_dtype"] = str(dtypes.pop()).removeprefix("torch.")
    # safetensors refuses shared storage (the tied heads): one contiguous copy per key
    layout = backbone_layout(recipe["model"])
    tensors = {
        k: v.detach().to("cpu").contiguous().clone()
        for k, v in ddetr_to_hf(state_dict, layout).items()
    }
    with atomic_folder(folder) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    return folder


def download(model_id: str) -> Path:
    """A Hub model's folder in huggingface_hub's cache: config.json and model.safetensors, or
    pytorch_model.bin when the model has no safetensors file (nothing else is fetched).

    Called for a name that is no local file or folder (``weights.is_hub_id``): when the Hub
    gives nothing, the one line says both."""
    snapshot_download = require("huggingface_hub", "hf").snapshot_download
    try:
        path = Path(
            snapshot_download(repo_id=model_id, allow_patterns=["config.json", _WEIGHT_FILES[0]])
        )
        if not (path / _WEIGHT_FILES[0]).is_file():
            path = Path(snapshot_download(repo_id=model_id, allow_patterns=[_WEIGHT_FILES[1]]))
    except Exception as exc:  # offline, no such repo, gated, proxy: one line for all of them
        raise DdetrError(
            f"{model_id}: no such local file or folder, and no Hugging Face Hub model reached "
            f"({_hub_failure(exc)}); download the folder elsewhere and pass it "
            "(--weights path/to/folder)"
        ) from exc
    return path


def _hub_failure(exc: Exception) -> str:
    """Why the Hub gave nothing, in words, then huggingface_hub's own first line."""
    kind = type(exc).__name__
    detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
    detail = f"{kind}: {detail}" if detail else kind
    if kind in ("RepositoryNotFoundError", "GatedRepoError"):
        return f"the Hub has no such public model; {detail}"
    if kind == "LocalEntryNotFoundError" or isinstance(exc, OSError | ConnectionError):
        return f"offline: the Hub cannot be reached; {detail}"
    return detail
