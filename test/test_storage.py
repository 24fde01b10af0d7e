"""Map files: bit-identical round trip, atomic writes, clear errors for every bad file; PLY export; fileio."""

import json
import struct

import numpy as np
import pytest
import torch

from fhgs_ros.core import fileio
from fhgs_ros.core.camera import Camera, look_at
from fhgs_ros.core.fileio import atomic_write_json, atomic_writer, save_png
from fhgs_ros.core.storage import (COMPACT_VERSION, MAP_FIELDS, MapFileError, build_map_payload, export_ply,
                                   load_map, save_map, tensor_checksums)
from fhgs_ros.core.surfels import TRAINABLE, SurfelMap

D = 12


def make_map(n: int = 40, seed: int = 0) -> SurfelMap:
    g = torch.Generator().manual_seed(seed)
    m = SurfelMap.create(torch.randn(n, 3, generator=g), torch.rand(n, 3, generator=g),
                         torch.randn(n, D, generator=g) * 3, scales=torch.rand(n, 2, generator=g) * 0.1 + 0.01,
                         first_uid=100)
    m.sh_rest.data.normal_(generator=g)
    m.opacity_logit.data.normal_(generator=g)
    child = m.clone_rows(torch.tensor([1, 5, 7]))  # parent_uid != uid for these
    m.append(child)
    m.sh_degree = 2
    m.meta = {"note": "hello", "density": {"clones": 3}}
    return m


def keyframes():
    return [Camera(64, 48, 50.0, 51.0, 31.5, 23.5, look_at((1.0, 2.0, 3.0), (0, 0, 0)), name="kf0"),
            Camera(64, 48, 50.0, 51.0, 31.5, 23.5, look_at((-1.0, 2.0, 1.0), (0, 0, 0)), name="kf1")]


def extras():
    g = torch.Generator().manual_seed(9)
    return {"pca_mean": torch.randn(D, generator=g), "pca_basis": torch.randn(D, 3, generator=g)}


def save_good(path, m=None, compact=False):
    """A version-1 file by default (the validation cases below tamper with its field names)."""
    m = m if m is not None else make_map()
    save_map(path, m, {"feature_extractor": "sam_vit_b", "keyframes": keyframes(), "stamp": 1.5}, extras(),
             compact=compact)
    return m


def test_default_format_round_trip(tmp_path):
    """The default (version 2) file: every in-memory field bit-identical except sh_rest (float16 on disk)."""
    p = tmp_path / "map.fhgs"
    m = make_map()
    save_map(p, m, {"feature_extractor": "sam_vit_b"})
    back, meta, _ = load_map(p)
    assert meta["version"] == COMPACT_VERSION
    for name, a in m._tensor_fields().items():
        b = back._tensor_fields()[name]
        assert a.dtype == b.dtype, name
        if name == "sh_rest":
            assert torch.allclose(a, b, rtol=2 ** -11, atol=6e-8) and not torch.equal(a, b)
        else:
            assert torch.equal(a, b), name
    assert torch.equal(back.features_raw, m.features_raw) and torch.equal(back.features_unit, m.features_unit)


def test_round_trip_version1(tmp_path):
    """Version 1 files: every file field bit-identical, the in-memory features too (norm within 1e-3)."""
    p = tmp_path / "map.fhgs"
    m = save_good(p)
    back, meta, extra = load_map(p)
    for name in MAP_FIELDS:
        a, b = getattr(m, name), getattr(back, name)
        assert a.dtype == b.dtype, name
        if name == "features_raw":
            assert torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-4), name
        else:
            assert torch.equal(a.detach(), b.detach()), name
    assert torch.equal(back.features_unit16, m.features_unit16)
    assert torch.allclose(back.features_norm, m.features_norm, rtol=1e-3)
    for name in TRAINABLE:
        assert isinstance(getattr(back, name), torch.nn.Parameter)
    assert back.features_raw.dtype == torch.float16
    assert back.next_uid == m.next_uid and back.sh_degree == 2 and back.meta == m.meta
    assert meta["feature_extractor"] == "sam_vit_b" and meta["feature_dim"] == D and meta["stamp"] == 1.5
    assert meta["format"] == "fhgs_map" and meta["version"] == 1 and meta["num_surfels"] == len(m)
    kf = keyframes()
    assert len(meta["keyframes"]) == 2 and isinstance(meta["keyframes"][0], Camera)
    for a, b in zip(kf, meta["keyframes"]):
        assert a.to_dict() == b.to_dict()
    assert set(extra) == {"pca_mean", "pca_basis"}
    for k, v in extras().items():
        assert torch.equal(extra[k], v)
    # Saving the loaded map again preserves everything (the safetensors metadata order is not deterministic,
    # so compare contents, not bytes).
    p2 = tmp_path / "again.fhgs"
    save_map(p2, back, {"feature_extractor": "sam_vit_b", "keyframes": meta["keyframes"], "stamp": 1.5}, extra,
             compact=False)
    again, meta2, extra2 = load_map(p2)
    assert all(torch.equal(getattr(again, k), getattr(back, k)) for k in MAP_FIELDS if k != "features_raw")
    assert torch.allclose(again.features_raw.float(), back.features_raw.float(), rtol=1e-3, atol=1e-4)
    for d in (meta, meta2):  # features_raw is recomputed from the float16 unit vector and the norm
        d["crc32"].pop("features_raw")
    assert {k: v for k, v in meta2.items() if k != "keyframes"} == {k: v for k, v in meta.items() if k != "keyframes"}


def test_empty_map_round_trip(tmp_path):
    p = tmp_path / "empty.fhgs"
    save_map(p, SurfelMap.empty(D))
    back, meta, extra = load_map(p)
    assert len(back) == 0 and back.feature_dim == D and extra == {} and meta["keyframes"] == []


def test_failed_write_leaves_previous_file(tmp_path, monkeypatch):
    p = tmp_path / "map.fhgs"
    save_good(p)
    before = p.read_bytes()

    def boom(fd):
        raise OSError(28, "No space left on device (simulated)")

    monkeypatch.setattr(fileio, "_fsync", boom)
    with pytest.raises(OSError, match="simulated"):
        save_good(p, make_map(seed=1))
    monkeypatch.undo()
    assert p.read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["map.fhgs"]  # no temp file left behind
    load_map(p)


def test_atomic_writer_exception_mid_write(tmp_path):
    p = tmp_path / "out.bin"
    p.write_bytes(b"old complete file")
    with pytest.raises(RuntimeError):
        with atomic_writer(p) as f:
            f.write(b"half of the new")
            raise RuntimeError("crash in the middle")
    assert p.read_bytes() == b"old complete file"
    assert [x.name for x in tmp_path.iterdir()] == ["out.bin"]
    with atomic_writer(p) as f:
        f.write(b"new")
    assert p.read_bytes() == b"new"


def test_save_refuses_bad_input(tmp_path):
    m = make_map()
    m.means.data[0, 0] = float("nan")
    with pytest.raises(ValueError, match="means"):
        save_map(tmp_path / "x.fhgs", m)
    with pytest.raises(ValueError, match="pca_basis"):
        save_map(tmp_path / "x.fhgs", make_map(), extra_tensors={"pca_basis": torch.zeros(D, 4)})
    with pytest.raises(ValueError, match="collides"):
        save_map(tmp_path / "x.fhgs", make_map(), extra_tensors={"means": torch.zeros(3)})
    with pytest.raises(TypeError, match="JSON"):
        save_map(tmp_path / "x.fhgs", make_map(), {"bad": object()})
    assert not list(tmp_path.iterdir())


def _write_raw(path, tensors, metadata):
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)


def _tampered(path, *, tensors=None, header=None, meta_doc=None):
    t, h = build_map_payload(make_map(), {"keyframes": keyframes()}, extras(), compact=False)
    doc = json.loads(h["fhgs_meta"])
    if tensors:
        tensors(t)
        doc["crc32"] = tensor_checksums(t)  # keep the checksums valid so the deeper checks are reached
    if meta_doc:
        meta_doc(doc)
    h["fhgs_meta"] = json.dumps(doc)
    h.pop("fhgs_meta_crc32")  # (optional: older files have none) so the deeper checks are reached
    if header:
        header(h)
    _write_raw(path, t, h)
    return path


def _bytes(path, data):
    path.write_bytes(data)
    return path


def _set(d, k, v):
    d[k] = v


CASES = {
    "missing": (lambda p: p, "does not exist"),
    "empty": (lambda p: _bytes(p, b""), "not a safetensors file"),
    "png": (lambda p: _bytes(p, b"\x89PNG\r\n\x1a\n" + bytes(200)), "not a safetensors file"),
    "json_text": (lambda p: _bytes(p, struct.pack("<Q", 10) + b"{not json}"), "not valid JSON"),
    "no_format": (lambda p: _write_raw(p, {"a": torch.zeros(3)}, None) or p, "without a 'format'"),
    "foreign_format": (lambda p: _tampered(p, header=lambda h: _set(h, "format", "gsplat_ckpt")),
                       "its format is 'gsplat_ckpt'"),
    "newer": (lambda p: _tampered(p, header=lambda h: _set(h, "version", "3")), "newer"),
    "bad_version": (lambda p: _tampered(p, header=lambda h: _set(h, "version", "one")), "invalid format version"),
    "bad_meta_json": (lambda p: _tampered(p, header=lambda h: _set(h, "fhgs_meta", "{oops")), "fhgs_meta"),
    "missing_field": (lambda p: _tampered(p, tensors=lambda t: t.pop("quats")), "missing tensor field(s): quats"),
    "shape": (lambda p: _tampered(p, tensors=lambda t: _set(t, "quats", torch.zeros(len(t["means"]) + 1, 4))),
              "inconsistent shapes: tensor 'quats'"),
    "feature_dim": (lambda p: _tampered(p, meta_doc=lambda d: _set(d, "feature_dim", D + 1)),
                    "tensor 'features_raw' has shape"),
    "dtype": (lambda p: _tampered(p, tensors=lambda t: _set(t, "features_raw", t["features_raw"].float())),
              "dtype"),
    "nan": (lambda p: _tampered(p, tensors=lambda t: t["sh_dc"].view(-1).__setitem__(4, float("nan"))),
            "'sh_dc' contains 1 NaN"),
    "count": (lambda p: _tampered(p, meta_doc=lambda d: _set(d, "num_surfels", 3)), "metadata says 3 surfels"),
    "dup_uid": (lambda p: _tampered(p, tensors=lambda t: t["uid"].__setitem__(1, t["uid"][0])), "not unique"),
    "next_uid": (lambda p: _tampered(p, meta_doc=lambda d: _set(d, "next_uid", 0)), "next_uid"),
    "pca": (lambda p: _tampered(p, tensors=lambda t: _set(t, "pca_mean", torch.zeros(D + 2))), "'pca_mean'"),
    "keyframe": (lambda p: _tampered(p, meta_doc=lambda d: d["keyframes"][1].__setitem__("fx", -1.0)),
                 "keyframe 1"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_files_raise_map_file_error(tmp_path, case):
    make, expect = CASES[case]
    p = make(tmp_path / f"{case}.fhgs")
    with pytest.raises(MapFileError) as ei:
        load_map(p)
    msg = str(ei.value)
    assert str(p) in msg, msg
    assert expect in msg, msg


@pytest.mark.parametrize("cut", [1, 100, 1000, "header"])
def test_truncated_files(tmp_path, cut):
    p = tmp_path / "map.fhgs"
    save_good(p)
    data = p.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    p.write_bytes(data[:8 + n // 2] if cut == "header" else data[:-cut])
    with pytest.raises(MapFileError, match="truncated"):
        load_map(p)


def test_damaged_tensor_data_fails_checksum(tmp_path):
    p = tmp_path / "map.fhgs"
    save_good(p)
    data = bytearray(p.read_bytes())
    data[-5] ^= 0x10  # flip one bit in the last tensor's data
    p.write_bytes(bytes(data))
    with pytest.raises(MapFileError, match="CRC-32"):
        load_map(p)


def test_corrupt_bytes_in_header(tmp_path):
    p = tmp_path / "map.fhgs"
    save_good(p)
    data = bytearray(p.read_bytes())
    data[8] = ord("[")  # the header JSON must be an object
    data[9:12] = b"\xff\xfe\x00"
    p.write_bytes(bytes(data))
    with pytest.raises(MapFileError, match="header"):
        load_map(p)
    with pytest.raises(MapFileError, match="is a directory"):
        load_map(tmp_path)


def test_export_ply(tmp_path):
    from fhgs_ros.core.mesh import read_mesh_ply

    m = make_map(10)
    p = tmp_path / "map.ply"
    export_ply(p, m)
    data = p.read_bytes()
    head = data[:data.index(b"end_header")].decode()
    names = [ln.split()[-1] for ln in head.splitlines() if ln.startswith("property")]
    n = len(m)
    assert names[:6] == ["x", "y", "z", "nx", "ny", "nz"]
    assert names[6:9] == ["f_dc_0", "f_dc_1", "f_dc_2"] and names[9] == "f_rest_0" and names[53] == "f_rest_44"
    assert names[54:61] == ["opacity", "scale_0", "scale_1", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert names[61:] == [f"feat_{i}" for i in range(D)]
    body = np.frombuffer(data[data.index(b"end_header") + 11:], dtype="<f4").reshape(n, len(names))
    assert np.array_equal(body[:, 0:3], m.means.detach().numpy())
    # f_rest is channel-major (3DGS): f_rest_0..14 are the red coefficients 1..15
    assert np.array_equal(body[:, 9:24], m.sh_rest.detach()[:, :, 0].numpy())
    assert np.array_equal(body[:, 61:], m.features_raw.float().numpy())
    assert np.array_equal(body[:, 57:61], m.quats.detach().numpy())
    assert read_mesh_ply(p).num_vertices == n
    export_ply(p, m, include_features=False)
    assert b"feat_0" not in p.read_bytes()[:4000]


def test_fileio_json_and_png(tmp_path):
    from PIL import Image

    j = tmp_path / "r.json"
    atomic_write_json(j, {"a": np.float32(1.5), "b": torch.tensor([1, 2]), "c": float("nan"), "d": (1, 2)})
    assert json.loads(j.read_text()) == {"a": 1.5, "b": [1, 2], "c": None, "d": [1, 2]}

    rgb = torch.rand(3, 5, 7)
    save_png(tmp_path / "rgb.png", rgb)
    back = np.asarray(Image.open(tmp_path / "rgb.png"))
    assert back.shape == (5, 7, 3) and np.abs(back / 255.0 - rgb.permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6
    depth = (np.arange(35, dtype=np.uint16) * 1000).reshape(5, 7)
    save_png(tmp_path / "d.png", depth)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "d.png")), depth)
    u8 = np.random.default_rng(0).integers(0, 255, (4, 6, 4), dtype=np.uint8)
    save_png(tmp_path / "rgba.png", u8)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "rgba.png")), u8)
    with pytest.raises(ValueError):
        save_png(tmp_path / "bad.png", np.zeros((4, 4, 3), np.uint16))
    assert not [x for x in tmp_path.iterdir() if x.name.endswith(".tmp")]
