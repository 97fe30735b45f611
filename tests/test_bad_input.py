"""The bad-input corpus: every reader on truncated, garbage, empty, huge, NaN, unknown-element and
wrongly encoded files, and config files with unknown keys, wrong types and out-of-range values.

Each case must end in a one-line UserError naming the file (or the config key), or, for the readers that
quarantine bad rows, in a counted skip with its reason. Never a traceback, never a silent wrong result.
The files are written into a temporary folder by the builders below, so that the huge ones (tens of MB)
never enter the repository; the small hand-written fixtures of each reader live beside its own tests.
"""
from __future__ import annotations

import gzip
import struct
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import pytest

from unite_sci.config import build_config
from unite_sci.errors import ConfigError, UserError
from unite_sci_modalities.crystals import data as cdata
from unite_sci_modalities.crystals import io as cio
from unite_sci_modalities.images import data as idata
from unite_sci_modalities.images import io as iio
from unite_sci_modalities.molecules import io as qio
from unite_sci_modalities.toy import ToyConfig

HUGE = 24 * 2**20  # bytes: big enough that a reader which loops per byte or copies quadratically shows it
RNG = np.random.default_rng(0)

NACL = """data_NaCl
_cell_length_a 5.64
_cell_length_b 5.64
_cell_length_c 5.64
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
Na1 Na 0.0 0.0 0.0
Cl1 Cl 0.5 0.5 0.5
"""


def garbage_bytes(n: int) -> bytes:
    return RNG.integers(0, 256, n, dtype=np.uint8).tobytes()


def garbage_text(n: int) -> bytes:
    words = np.array(["C", "1.0", "nan", "O", "-", "%%", "loop_", "_cell", "x", "0"])
    return " ".join(RNG.choice(words, n // 3)).encode()[:n]


# ------------------------------------------------------------------------------ molecules: xyz, sdf, npz
XYZ_OK = "3\nwater\nO 0.0 0.0 0.1\nH 0.0 0.76 -0.47\nH 0.0 -0.76 -0.47\n"
MOLECULE_CASES: dict[str, tuple[str, bytes, str]] = {
    "empty": ("empty.xyz", b"", "empty"),
    "whitespace only": ("blank.xyz", b"\n \n\t\n", "empty"),
    "binary garbage": ("garbage.xyz", garbage_bytes(4096), ""),
    "huge binary garbage": ("huge.xyz", garbage_bytes(HUGE), ""),
    "huge garbage text": ("huge_text.xyz", garbage_text(HUGE), ""),
    "header claims 10^12 atoms": ("claims.xyz", b"1000000000000\nbig\nC 0 0 0\n", "claims 1000000000000 atoms"),
    "second frame truncated": ("cut2.xyz", (XYZ_OK + "5\nx\nC 0 0 0\n").encode(), "frame 2"),
    "negative count": ("negative.xyz", b"-3\nx\nC 0 0 0\n", ""),
    "truncated": ("truncated.xyz", XYZ_OK.encode()[:40], ""),
    "NaN coordinate": ("nan.xyz", XYZ_OK.replace("0.76", "nan", 1).encode(), "finite"),
    "inf coordinate": ("inf.xyz", XYZ_OK.replace("0.76", "inf", 1).encode(), "finite"),
    "unknown element": ("unknown.xyz", XYZ_OK.replace("O ", "Qq ", 1).encode(), ""),
    "utf-16": ("utf16.xyz", XYZ_OK.encode("utf-16"), "UTF-8"),
    "latin-1 comment": ("latin1.xyz", XYZ_OK.replace("water", "eau gazéifiée").encode("latin-1"), "UTF-8"),
    "sdf garbage": ("garbage.sdf", garbage_text(20000), ""),
    "sdf huge binary": ("huge.sdf", garbage_bytes(HUGE), ""),
    "sdf empty": ("empty.sdf", b"", "empty"),
    "npz not a zip": ("bad.npz", garbage_bytes(1000), ""),
    "npz empty": ("empty.npz", b"", ""),
    "npz huge garbage": ("huge.npz", garbage_bytes(HUGE), ""),
    "unknown suffix": ("molecules.mol9", XYZ_OK.encode(), ""),
}


@pytest.mark.parametrize("case", MOLECULE_CASES, ids=list(MOLECULE_CASES))
def test_molecule_readers(case: str, tmp_path: Path) -> None:
    name, content, needle = MOLECULE_CASES[case]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError) as e:
        qio.read_molecules(path)
    one_line_naming(e.value, path, needle)


def test_molecule_reader_on_a_folder_and_a_missing_file(tmp_path: Path) -> None:
    for path in (tmp_path, tmp_path / "missing.xyz"):
        with pytest.raises(UserError) as e:
            qio.read_molecules(path)
        one_line_naming(e.value, path, "")


# --------------------------------------------------------------------------- crystals: csv (CDVAE), cif
def cdvae_csv(cifs: list[str]) -> bytes:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["", "material_id", "formation_energy_per_atom", "cif"])
    for i, c in enumerate(cifs):
        w.writerow([i, f"mp-{i}", -1.0, c])
    return buf.getvalue().encode()


CRYSTAL_FILE_ERRORS: dict[str, tuple[str, bytes, str]] = {
    "empty": ("empty.csv", b"", "empty"),
    "binary garbage": ("garbage.csv", garbage_bytes(4096), ""),
    "huge binary garbage": ("huge.csv", garbage_bytes(HUGE), ""),
    "no cif column": ("nocif.csv", b"material_id,x\nmp-1,2\n", "no 'cif' column"),
    "utf-16": ("utf16.csv", cdvae_csv([NACL]).decode().encode("utf-16"), ""),
    "truncated gzip": ("cut.csv.gz", gzip.compress(cdvae_csv([NACL] * 50))[:300], ""),
    "only header": ("header.csv", b"material_id,cif\n", "empty"),
}


@pytest.mark.parametrize("case", CRYSTAL_FILE_ERRORS, ids=list(CRYSTAL_FILE_ERRORS))
def test_crystal_csv_file_errors(case: str, tmp_path: Path) -> None:
    name, content, needle = CRYSTAL_FILE_ERRORS[case]
    path = tmp_path / name
    path.write_bytes(content)
    for read in (lambda: cdata.parse_file(path, 20, cache_dir="", progress=False),
                 lambda: cio.read_structures(path)):
        with pytest.raises(UserError) as e:
            read()
        one_line_naming(e.value, path, needle)


BAD_CIFS: dict[str, tuple[str, str]] = {
    "garbage": ("%%% not a cif %%%\n" * 5, ""),
    "truncated": (NACL[:150], ""),
    "NaN coordinate": (NACL.replace("0.5 0.5 0.5", "nan 0.5 0.5"), ""),
    "unknown element": (NACL.replace("Cl1 Cl", "Xx1 Xx"), ""),
    "overlapping atoms": (NACL.replace("0.5 0.5 0.5", "0.01 0.0 0.0"), "close_atoms"),
    "zero-volume cell": (NACL.replace("_cell_length_c 5.64", "_cell_length_c 0"), ""),
    "over the atom limit": ("SUPERCELL", "too_many_atoms"),
}


@pytest.mark.parametrize("case", BAD_CIFS, ids=list(BAD_CIFS))
def test_bad_cif_rows_are_counted_skips_with_reasons(case: str, tmp_path: Path) -> None:
    cif, reason = BAD_CIFS[case]
    if cif == "SUPERCELL":  # a 3 x 3 x 3 rock-salt supercell: 54 atoms, over MP-20's 20
        from pymatgen.core import Structure
        cif = Structure.from_str(NACL, fmt="cif").make_supercell([3, 3, 3]).to(fmt="cif")
    path = tmp_path / "rows.csv"
    path.write_bytes(cdvae_csv([NACL, cif, NACL]))
    # the training reader quarantines the row with its reason
    parsed = cdata.parse_file(path, 20, cache_dir="", progress=False)
    assert parsed.n_rows == 3 and parsed.skip_rows.tolist() == [1], parsed.skip_reasons
    assert reason in parsed.skip_reasons[0]
    # the evaluate reader keeps what pymatgen can build (overlaps and big cells are for the metrics to
    # count invalid) and counts the rest; above the tolerated share it refuses the file, naming it
    found = cio.read_structures(path, max_skip_fraction=0.5)
    skipped = sum(found.skipped.values())
    assert len(found.structures) + skipped == 3 and skipped <= 1
    if skipped:
        with pytest.raises(UserError) as e:
            cio.read_structures(path, max_skip_fraction=0.0)
        one_line_naming(e.value, path, "unreadable")


def test_cif_folder_with_garbage_files(tmp_path: Path) -> None:
    (tmp_path / "good.cif").write_text(NACL)
    (tmp_path / "bin.cif").write_bytes(garbage_bytes(5000))
    (tmp_path / "huge.cif").write_bytes(garbage_text(HUGE // 4))
    (tmp_path / "utf16.cif").write_bytes(NACL.encode("utf-16"))
    with pytest.raises(UserError) as e:
        cio.read_structures(tmp_path)
    one_line_naming(e.value, tmp_path, "unreadable")
    found = cio.read_structures(tmp_path, max_skip_fraction=1.0)
    assert found.names == ["good"] and sum(found.skipped.values()) == 3


def test_crystal_extxyz_garbage(tmp_path: Path) -> None:
    for name, content in [("bin.extxyz", garbage_bytes(3000)), ("huge.extxyz", garbage_text(HUGE)),
                          ("empty.extxyz", b"")]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(UserError) as e:
            cio.read_structures(path)
        one_line_naming(e.value, path, "")


# ------------------------------------------------------------------------------------------ images
def idx_bytes(shape: tuple[int, ...], body: bytes) -> bytes:
    return bytes([0, 0, 0x08, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + body


IMAGE_CASES: dict[str, tuple[str, bytes, Callable[[Path], object], str]] = {
    "idx empty": ("a-idx3-ubyte", b"", idata.read_idx, "empty"),
    "idx garbage": ("b-idx3-ubyte", garbage_bytes(5000), idata.read_idx, "magic"),
    "idx truncated": ("c-idx3-ubyte", idx_bytes((10, 28, 28), bytes(5000)), idata.read_idx, "truncated"),
    "idx header claims 4e9 images": ("d-idx3-ubyte", idx_bytes((2**32 - 1, 28, 28), bytes(100)), idata.read_idx,
                                     "truncated"),
    "idx trailing bytes": ("e-idx1-ubyte", idx_bytes((3,), bytes(10)), idata.read_idx, "trailing"),
    "idx huge garbage": ("f-idx3-ubyte", garbage_bytes(HUGE), idata.read_idx, ""),
    "idx bad gzip": ("g-idx3-ubyte.gz", b"\x1f\x8b" + garbage_bytes(200), idata.read_idx, "gzip"),
    "npz garbage": ("h.npz", garbage_bytes(3000), lambda p: iio.read_npz(p), ""),
    "npz huge garbage": ("i.npz", garbage_bytes(HUGE), lambda p: iio.read_npz(p), ""),
    "mnist5k garbage": ("j.csv.gz", gzip.compress(garbage_text(20000)), idata.load_mnist5k, ""),
    "mnist5k not gzip": ("k.csv.gz", b"1,2,3\n", idata.load_mnist5k, ""),
}


@pytest.mark.parametrize("case", IMAGE_CASES, ids=list(IMAGE_CASES))
def test_image_readers(case: str, tmp_path: Path) -> None:
    name, content, read, needle = IMAGE_CASES[case]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError) as e:
        read(path)
    one_line_naming(e.value, path, needle)


def test_png_folder_of_garbage(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(garbage_bytes(2000))
    (tmp_path / "b.png").write_bytes(b"")
    with pytest.raises(UserError) as e:
        iio.read_png_folder(tmp_path)
    one_line_naming(e.value, tmp_path, "")


# ------------------------------------------------------------------------------------------ configs
CONFIG_CASES: dict[str, tuple[bytes, str]] = {
    "unknown key": (b"train:\n  batchsize: 8\n", "batchsize"),
    "unknown section": (b"trainer:\n  batch_size: 8\n", "trainer"),
    "wrong type": (b"train:\n  batch_size: eight\n", "batch_size"),
    "out of range": (b"optim:\n  lr: -1.0\n", "lr"),
    "nan value": (b"optim:\n  lr: .nan\n", "optim.lr': must be a finite"),
    "inf in a nested list": (b"sample:\n  cfg_interval: [0.0, .inf]\n", "sample.cfg_interval[1]"),
    "list at the top": (b"- a\n- b\n", ""),
    "scalar at the top": (b"42\n", ""),
    "unclosed bracket": (b"train: [unclosed\n", ""),
    "tab indentation": (b"train:\n\tbatch_size: 8\n", ""),
    "binary garbage": (garbage_bytes(2000), ""),
    "utf-16": ("train:\n  batch_size: 8\n".encode("utf-16"), ""),
    "huge file": (b"# " + b"x" * HUGE + b"\n", ""),
}


@pytest.mark.parametrize("case", CONFIG_CASES, ids=list(CONFIG_CASES))
def test_config_files(case: str, tmp_path: Path) -> None:
    content, needle = CONFIG_CASES[case]
    path = tmp_path / "run.yaml"
    path.write_bytes(content)
    try:
        build_config("toy", ToyConfig, [path], [])
    except ConfigError as e:
        one_line_naming(e, None if case in ("nan value", "out of range", "inf in a nested list") else path, needle)
    else:
        assert case == "huge file", f"{case}: accepted"  # a huge comment-only file is a valid empty config


def test_cli_prints_one_line_for_a_garbage_config_and_sample_file(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_bytes(garbage_bytes(500))
    xyz = tmp_path / "samples.xyz"
    xyz.write_bytes(garbage_bytes(500))
    for args in (["train", "--modality", "toy", "--config", str(cfg), "--max-steps", "1"],
                 ["evaluate", "--modality", "qm9", "--samples", str(xyz)]):
        r = subprocess.run([sys.executable, "-m", "unite_sci.cli", *args], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-1500:]
        assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error:"), r.stderr


# ------------------------------------------------------------------------------------------ helpers
def one_line_naming(err: BaseException, path: Path | None, needle: str) -> None:
    msg = str(err)
    assert "\n" not in msg.strip(), f"multi-line error: {msg!r}"
    assert len(msg) < 600, f"overlong error: {msg[:200]}..."
    if path is not None:
        assert str(path) in msg or path.name in msg, f"error does not name the file: {msg}"
    assert needle.lower() in msg.lower(), f"{needle!r} not in {msg!r}"


# ------------------------------------------------------------------ metrics on garbage samples
def test_molecule_metrics_on_garbage_samples() -> None:
    from unite_sci_modalities.molecules import metrics as qm

    rng = np.random.default_rng(1)
    cases = {
        "0 atoms": (np.zeros(0, int), np.zeros((0, 3))),
        "1000 random atoms": (rng.choice([1, 6, 7, 8, 9], 1000), rng.uniform(-12, 12, (1000, 3))),
        "all atoms in one point": (np.array([6, 6, 8, 1, 1]), np.ones((5, 3))),
        "random atoms": (rng.choice([1, 6, 7, 8], 12), rng.normal(size=(12, 3))),
        "inf": (np.array([6, 8]), np.array([[0, 0, 0], [np.inf, 0, 0]])),
    }
    zs, ps = zip(*cases.values())
    out = qm.evaluate_generation(list(zs), list(ps), {"C"}, workers=1, progress=False)
    assert out["adit/validity"] < 100 and out["edm/molecule_stability"] == 0.0
    for name, (z, pos) in cases.items():
        r = qm.evaluate_molecule(z, pos)
        # invalid with the reason written down, or (atoms on one point) judged as the peers judge it, which
        # is ADiT-valid, and flagged as too close; never connected or stable
        assert not r.connected and not r.stable and (r.reason or r.too_close), name


def test_crystal_metrics_on_garbage_samples() -> None:
    from unite_sci_modalities.crystals import metrics as cm

    rng = np.random.default_rng(2)
    cube, right = np.full(3, 10.0), np.full(3, 90.0)
    cases = {
        "0 atoms": (np.zeros(0, int), np.zeros((0, 3)), cube, right),
        "1000 atoms of 60 elements": (rng.integers(1, 61, 1000), rng.random((1000, 3)), cube, right),
        "all atoms in one point": (np.array([11, 17, 11, 17]), np.zeros((4, 3)), cube, right),
        "flat cell": (np.array([11, 17]), rng.random((2, 3)), np.array([5.0, 5.0, 0.0]), right),
        "degenerate angles": (np.array([11, 17]), rng.random((2, 3)), cube, np.array([90.0, 90.0, 180.0])),
        "inf length": (np.array([11, 17]), rng.random((2, 3)), np.array([5.0, np.inf, 5.0]), right),
    }
    out = cm.evaluate_generation(list(cases.values()), train=[cases["all atoms in one point"]], workers=1,
                                 time_limit_s=20, progress=False)
    assert out["MP-20/struct_valid_pct"] == 0.0 and out["MP-20/valid_pct"] == 0.0
    v = cm.validity(list(cases.values()), time_limit_s=20, progress=False)
    assert not v.valid.any() and all(v.reasons), dict(zip(cases, v.reasons))
    rec = cm.reconstruction_metrics(list(cases.values()), list(cases.values()), time_limit_s=20, progress=False)
    assert rec["MP-20/match_rate_pct"] == 0.0  # invalid crystals never count as matches (the ADiT gate)


def test_image_metrics_on_garbage_samples() -> None:
    from unite_sci_modalities.images import fid

    x = torch.rand(4, 1, 32, 32)
    garbage = torch.stack([torch.full_like(x[0], float("nan")), torch.full_like(x[0], float("inf")),
                           x[0] * 1e6, -x[0]])
    u8 = iio.to_uint8(garbage)
    assert u8.dtype == np.uint8 and u8[0].max() == 0 and u8[1].min() == 255 and u8[3].max() == 0
    p = fid.psnr(torch.from_numpy(u8).float() / 255, torch.zeros_like(x))
    assert torch.isfinite(p).all() and p[0] == 100.0  # identical images: the floor, not inf
