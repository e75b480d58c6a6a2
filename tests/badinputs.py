"""A corpus of bad inputs, built on the fly (nothing binary is committed).

Small valid things to break (a torch-free ONNX classifier with its spec, a class
folder dataset, a fake run dir) and the broken things themselves (truncated files,
an image over OpenCV's pixel limit, a multi-page TIFF, a truncated video).
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from leukedge.spec import INPUT_NAME, ONNX_METADATA_KEY, OUTPUT_NAME, ModelSpec

SIZE = 32


def spec_dict(**changes: Any) -> dict[str, Any]:
    d = ModelSpec(arch="cnn", input_size=SIZE, crop_style="context").to_dict()
    d.update(changes)
    return d


def tiny_onnx(
    path: Path,
    spec: dict[str, Any] | None = None,
    classes_out: int = 2,
    input_size: int = SIZE,
    poison: bool = False,
) -> Path:
    """A classifier graph (mean colour -> linear) with ``spec`` embedded, made without torch.

    ``classes_out``/``input_size`` may contradict the spec; ``poison`` makes every
    logit NaN (a broken model behind a valid spec).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, classes_out)).astype(np.float32)
    b = np.zeros(classes_out, np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["input", "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["pre"]),
        helper.make_node("Mul", ["pre", "scale"], [OUTPUT_NAME]),
    ]
    inits = [
        numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(b, "b"),
        numpy_helper.from_array(np.array([np.nan if poison else 1.0], np.float32), "scale"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info(
                INPUT_NAME, TensorProto.FLOAT, ["N", 3, input_size, input_size]
            )
        ],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", classes_out])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key = ONNX_METADATA_KEY
    entry.value = json.dumps(spec if spec is not None else spec_dict())
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", image)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def cell_image(seed: int, size: int = 16, gray: bool = False) -> np.ndarray:
    img = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    if gray:
        img[:, :, 1] = img[:, :, 2] = img[:, :, 0]
    return img


def class_folders(root: Path, per_class: int = 4, size: int = 16) -> Path:
    """DATA/{hem,all}/*.png with distinct random pixels."""
    for k, cls in enumerate(("hem", "all")):
        for i in range(per_class):
            write_png(root / cls / f"{cls}_{i}.png", cell_image(100 * k + i, size))
    return root


def huge_png() -> bytes:
    """A PNG whose header claims 40000 x 40000 pixels: over OpenCV's CV_IO_MAX_IMAGE_PIXELS."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def multipage_tiff(path: Path, pages: int = 3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwritemulti(str(path), [cell_image(i, 64) for i in range(pages)])
    return path


def truncated_video(path: Path, frames: int = 20, keep: float = 0.8) -> Path:
    """An MJPG AVI cut short: its header still announces ``frames`` frames."""
    full = path.with_name("full_" + path.name)
    writer = cv2.VideoWriter(str(full), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(frames):
        writer.write(np.full((48, 64, 3), (i * 10, 80, 160), np.uint8))
    writer.release()
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def fake_run(root: Path, data: Path, checkpoint: bytes = b"") -> Path:
    """A run dir whose files parse but whose checkpoint is ``checkpoint`` (corrupt by default)."""
    from leukedge.data.layouts import load_dataset
    from leukedge.data.splits import make_split
    from leukedge.train.config import TrainConfig

    root.mkdir(parents=True, exist_ok=True)
    ModelSpec.from_dict(spec_dict()).save(root / "spec.json")
    dataset = load_dataset(data)
    make_split(dataset, "subject", 0).save(root / "split.json", dataset)
    cfg = TrainConfig(model="cnn", data=str(data), out=str(root), img_size=SIZE, workers=0)
    (root / "config.json").write_text(json.dumps(cfg.to_dict()))
    (root / "checkpoint.pt").write_bytes(checkpoint)
    (root / "last.pt").write_bytes(checkpoint)
    return root


def tree(root: Path) -> dict[str, int]:
    """Every file under ``root`` with its size: what a command must leave alone."""
    return {
        str(p.relative_to(root)): p.stat().st_size
        for p in sorted(root.rglob("*"))
        if p.is_file() or p.is_symlink()
    }
