"""Crystal reader, protocols, cache and tensors (modalities/crystals/data.py, io.py)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from unite_sci.errors import ConfigError, DataError
from unite_sci_modalities.crystals import data as cdata
from unite_sci_modalities.crystals.data import (Crystals, atom_count_distribution, load_split, pad_batch,
                                                parse_file, random_translate, sample_atom_counts,
                                                to_structure, unpad_batch)
from unite_sci_modalities.crystals.io import plot_cells, read_structures, write_cifs, write_extxyz

HERE = Path(__file__).parent / "data" / "crystals"


def _matcher():
    from pymatgen.analysis.structure_matcher import StructureMatcher
    return StructureMatcher(stol=0.5, ltol=0.3, angle_tol=10)


# ----------------------------------------------------------------------------- reading rows
def test_real_rows_parse_niggli_and_round_trip():
    from pymatgen.core import Structure
    parsed = parse_file(HERE / "mp20_test_rows.csv", max_atoms=20, cache_dir="", progress=False)
    assert parsed.n_rows == 6 and len(parsed.skip_rows) == 0
    rows = cdata.read_rows(HERE / "mp20_test_rows.csv")
    z, frac = parsed.items(np.arange(6))
    for i in range(6):
        assert ((frac[i] >= 0) & (frac[i] < 1)).all()
        s = to_structure(z[i], frac[i], parsed.lengths[i], parsed.angles[i])
        original = Structure.from_str(rows[i]["cif"], fmt="cif")
        assert _matcher().fit(s, original)
        # Niggli: a <= b <= c, and the same volume as the CIF cell
        assert parsed.lengths[i][0] <= parsed.lengths[i][1] + 1e-6 <= parsed.lengths[i][2] + 2e-6
        assert s.volume == pytest.approx(original.volume, rel=1e-6)


def test_perov5_rows():
    parsed = parse_file(HERE / "perov5_rows.csv", max_atoms=5, cache_dir="", progress=False)
    assert parsed.num_atoms.tolist() == [5, 5, 5] and parsed.ids.tolist() == ["3961", "11922", "6694"]


def test_malformed_rows_are_counted_by_reason():
    parsed = parse_file(HERE / "mp20_malformed.csv", max_atoms=20, cache_dir="", progress=False)
    assert parsed.ids.tolist() == ["mp-1001"]  # the one good row
    assert sorted(parsed.skip_reasons.tolist()) == sorted(
        ["unparseable_cif", "unparseable_cif", "unknown_species", "missing_cif", "close_atoms"])
    with pytest.raises(DataError, match=r"mp20_malformed.csv: 5 of 6 rows unusable"):
        cdata._check_skips(HERE / "mp20_malformed.csv", parsed, False, 0.05)
    cdata._check_skips(HERE / "mp20_malformed.csv", parsed, False, 0.9)  # allowed when asked


def test_atom_limit_is_a_skip():
    parsed = parse_file(HERE / "mp20_test_rows.csv", max_atoms=8, cache_dir="", progress=False)
    assert (parsed.num_atoms <= 8).all() and "too_many_atoms" in parsed.skip_reasons.tolist()


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"\x1f\x8b\x08\x00garbage", "cannot be read"),
    (b"material_id,formula\nmp-1,NaCl\n", "no 'cif' column"),
    (b"\xff\xfe\x00bin\x00ary", "cannot be read|no 'cif' column|empty"),
])
def test_bad_files_raise_data_error_naming_the_file(tmp_path, content, message):
    f = tmp_path / "broken.csv"
    f.write_bytes(content)
    with pytest.raises(DataError, match=rf"broken.csv.*({message})"):
        parse_file(f, max_atoms=20, cache_dir="", progress=False)


def test_missing_file_and_bad_names():
    with pytest.raises(DataError, match="nowhere.csv: file not found"):
        parse_file("nowhere.csv", max_atoms=20, cache_dir="")
    with pytest.raises(ConfigError, match="unknown crystal dataset 'qm9'"):
        load_split("qm9")
    with pytest.raises(ConfigError, match="unknown split"):
        load_split("mp20", "training")


# ----------------------------------------------------------------------------- cache
def test_cache_is_written_atomically_reused_and_invalidated(tmp_path, monkeypatch):
    src = tmp_path / "rows.csv"
    shutil.copy(HERE / "mp20_test_rows.csv", src)
    cache = tmp_path / "cache"
    first = parse_file(src, 20, cache_dir=cache, progress=False)
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"  # no temporary file left behind
    with np.load(files[0], allow_pickle=False) as f:  # flat arrays, no pickles
        assert set(f.files) >= {"z", "frac", "lengths", "angles", "ids", "num_atoms"}

    def boom(*a, **k):
        raise AssertionError("parsed again despite a valid cache")
    monkeypatch.setattr(cdata, "parallel_map", boom)
    again = parse_file(src, 20, cache_dir=cache, progress=False)
    np.testing.assert_array_equal(first.frac, again.frac)
    monkeypatch.undo()
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 10**9))  # file changed
    parse_file(src, 20, cache_dir=cache, progress=False)
    assert len(list(cache.iterdir())) == 2


# ----------------------------------------------------------------------------- protocols
def test_offline_protocol_splits(tmp_path):
    root = HERE / "offline"
    kw = dict(offline_root=root, cache_dir=tmp_path, progress=False, holdout_fraction=0.25, seed=3)
    train, val, test = (load_split("mp20", s, **kw) for s in ("train", "val", "test"))
    assert {train.protocol, val.protocol, test.protocol} == {"MP-20 offline"}
    assert not set(train.ids) & set(val.ids)
    assert len(train) + len(val) == 8 + 4       # val split + train rows that have a CIF
    assert len(val) == 3 and len(test) == 4     # round(0.25 * 12) held out
    assert train.skipped == {cdata.EXPECTED_MISSING: 6} and val.skipped == {}
    again = load_split("mp20", "val", **kw)
    assert again.ids == val.ids                 # seeded
    other = load_split("mp20", "val", **{**kw, "seed": 4})
    assert other.ids != val.ids


def test_canonical_protocol_from_data_dir(tmp_path):
    kw = dict(data_dir=HERE / "canonical", cache_dir=tmp_path, progress=False)
    sizes = {s: len(load_split("mp20", s, **kw)) for s in ("train", "val", "test")}
    assert sizes == {"train": 3, "val": 2, "test": 2}
    assert load_split("mp20", "test", **kw).protocol == "MP-20"
    with pytest.raises(DataError, match="train.csv: file not found"):
        load_split("mp20", "train", data_dir=tmp_path, cache_dir=tmp_path)


def test_real_offline_files_parse_in_parallel():
    """The first 40 rows of the offline MP-20 validation file (kept in tests/data), serial and with 2 worker
    processes: the same crystals, in the same order, to the last bit."""
    small = HERE / "mp20_val_40.csv.gz"
    serial = parse_file(small, 20, cache_dir="", progress=False)
    par = parse_file(small, 20, workers=2, cache_dir="", progress=False)
    assert serial.n_rows == 40 and len(serial.skip_rows) == 0
    assert serial.ids.tolist() == par.ids.tolist() == [r["material_id"] for r in cdata.read_rows(small)]
    for key in ("num_atoms", "z", "frac", "lengths", "angles", "rows"):
        np.testing.assert_array_equal(getattr(serial, key), getattr(par, key), err_msg=key)


# ----------------------------------------------------------------------------- tensors
def _crystals() -> Crystals:
    return load_split("mp20", "test", data_dir=HERE / "canonical", cache_dir="", progress=False)


def test_pad_batch_round_trip_and_shapes():
    c = load_split("mp20", "train", offline_root=HERE / "offline", cache_dir="", progress=False)
    items = [c[i] for i in range(len(c))]
    z, frac, lattice, mask = pad_batch(items, max_atoms=20)
    assert z.shape == (len(c), 20) and frac.shape == (len(c), 20, 3) and lattice.shape == (len(c), 6)
    assert mask.dtype == torch.bool and (mask.sum(1).numpy() == c.num_atoms).all()
    assert (z[~mask] == 0).all() and (frac[~mask] == 0).all()
    np.testing.assert_allclose(lattice[:, :3].numpy(), c.scaled_lengths, rtol=1e-6)
    back = unpad_batch(z, frac, lattice, mask)
    for orig, rec in zip(items, back):
        np.testing.assert_array_equal(orig.z, rec.z)
        np.testing.assert_allclose(orig.frac, rec.frac, atol=1e-6)
        np.testing.assert_allclose(orig.lengths, rec.lengths, rtol=1e-5)
    with pytest.raises(DataError, match="more than max_atoms="):
        pad_batch(items, max_atoms=int(c.num_atoms.max()) - 1)


def test_random_translation_keeps_the_crystal():
    c = _crystals()
    z, frac, lattice, mask = pad_batch([c[0], c[1]])
    g = torch.Generator().manual_seed(0)
    moved = random_translate(frac, mask, g)
    assert (moved[~mask] == 0).all() and (moved >= 0).all() and (moved < 1).all()
    back = unpad_batch(z, moved, lattice, mask)
    for orig, rec in zip([c[0], c[1]], back):
        assert _matcher().fit(to_structure(*orig[:4]), to_structure(*rec[:4]))
        diff = (rec.frac - orig.frac) % 1.0  # one shift for every atom of a crystal
        assert np.allclose(diff, diff[0], atol=1e-5) or np.allclose((diff + 0.5) % 1, (diff[0] + 0.5) % 1, atol=1e-5)


def test_atom_count_distribution():
    c = load_split("mp20", "train", offline_root=HERE / "offline", cache_dir="", progress=False)
    p = atom_count_distribution(c, max_atoms=20)
    assert p.shape == (21,) and p.sum() == pytest.approx(1.0) and p[0] == 0
    n = sample_atom_counts(p, 500, torch.Generator().manual_seed(0))
    assert set(n.tolist()) <= set(np.flatnonzero(p).tolist())


# ----------------------------------------------------------------------------- files
def test_io_round_trip(tmp_path):
    c = _crystals()
    structures = c.structures()
    garbage = (np.array([6]), np.array([[np.nan, 0, 0]]), np.ones(3), np.full(3, 90.0))
    cifs = write_cifs(structures + [garbage], tmp_path / "cif")
    assert [p.name for p in cifs] == ["sample_00000.cif", "sample_00001.cif"]  # the NaN sample is left out
    xyz = write_extxyz(structures, tmp_path / "samples.extxyz")
    png = plot_cells(structures, tmp_path / "cells.png", n=2)
    assert png.stat().st_size > 1000
    for path in (tmp_path / "cif", xyz):  # the same cell, site order and coordinates come back
        back = read_structures(path)
        assert len(back.structures) == 2 and back.skipped == {}
        for a, b in zip(structures, back.structures):
            assert [s.Z for s in a.species] == [s.Z for s in b.species]
            np.testing.assert_allclose(b.lattice.abc, a.lattice.abc, rtol=0, atol=1e-6)  # Angstrom
            np.testing.assert_allclose(b.lattice.angles, a.lattice.angles, rtol=0, atol=1e-6)  # degrees
            np.testing.assert_allclose((b.frac_coords - a.frac_coords + 0.5) % 1 - 0.5, 0, atol=1e-6)
    # the csv holds the rows' original CIFs, before the Niggli reduction of load_split: the same crystal in
    # another cell basis, so a matcher without rescaling and with tolerances 100x below pymatgen's defaults
    from pymatgen.analysis.structure_matcher import StructureMatcher
    tight = StructureMatcher(ltol=2e-3, stol=3e-3, angle_tol=0.05, scale=False, primitive_cell=False)
    back = read_structures(HERE / "canonical" / "test.csv.gz")
    assert len(back.structures) == 2 and back.skipped == {}
    for a, b in zip(structures, back.structures):
        assert tight.fit(a, b)
        assert b.volume == pytest.approx(a.volume, rel=1e-6)


def test_read_structures_malformed(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_structures(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no .cif"):
        read_structures(tmp_path / "empty")
    with pytest.raises(DataError, match=r"mp20_malformed.csv: 5 of 6 entries unreadable|more than"):
        read_structures(HERE / "mp20_malformed.csv")
    got = read_structures(HERE / "mp20_malformed.csv", max_skip_fraction=1.0)
    assert got.names[0] == "mp-1001" and got.skipped.get("missing_cif") == 1
    bad = tmp_path / "bad.extxyz"
    bad.write_text("3\nnot a header\nC 0 0\n")
    with pytest.raises(DataError, match="bad.extxyz: not a readable extxyz"):
        read_structures(bad)
    (tmp_path / "bad.txt").write_text("x")
    with pytest.raises(DataError, match="unknown crystal file type"):
        read_structures(tmp_path / "bad.txt")


# ----------------------------------------------------------------------------- shipped copies, limits
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_a_limit_keeps_the_first_crystals_of_the_whole_split(tmp_path, split):
    """limit=k parses only what it needs, yet gives the whole split's first k crystals (skips included:
    the fixture's train file has rows without a CIF); with the file cached, the cache serves it."""
    kw = dict(offline_root=HERE / "offline", progress=False, holdout_fraction=0.25, seed=3)
    whole = load_split("mp20", split, cache_dir="", **kw)
    for k in (1, 2, len(whole), len(whole) + 5):
        for cache in ("", tmp_path):
            part = load_split("mp20", split, cache_dir=cache, limit=k, **kw)
            assert part.ids == whole.ids[:k], (k, cache)
            for a, b in zip(part.frac, whole.frac):
                np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(part.lengths, whole.lengths[:k])
        load_split("mp20", split, cache_dir=tmp_path, **kw)  # the whole file, cached for the next k


def test_mp20_offline_loads_from_the_shipped_copy_with_nothing_else(tmp_path, monkeypatch):
    """A fresh install: no $UNITE_SCI_CRYSTAL_DATA, an empty HOME and cache; small limits keep it cheap."""
    from unite_sci.engine import load_config, make_adapter

    monkeypatch.delenv("UNITE_SCI_CRYSTAL_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("UNITE_SCI_CACHE", str(tmp_path / "cache"))
    assert cdata.default_offline_root() == cdata.SHIPPED_ROOT
    assert cdata.SHIPPED_ROOT.is_relative_to(Path(cdata.__file__).parent)  # inside the installed package
    cfg = load_config("mp20", overrides=["data.num_train=6", "data.num_val=3", "data.num_test=3",
                                         "data.load_workers=1"])
    splits = make_adapter(cfg).build_splits()
    assert {k: (v.protocol, len(v)) for k, v in splits.items()} == {
        "train": ("MP-20 offline", 6), "val": ("MP-20 offline", 3), "test": ("MP-20 offline", 3)}
    test_rows = cdata.read_rows(cdata.SHIPPED_ROOT / "mp_20" / "test.csv.gz")
    assert len(test_rows) == 9046 and splits["test"].ids == [r["material_id"] for r in test_rows[:3]]
    assert not set(splits["train"].ids) & set(splits["val"].ids)
    for name in ("val.csv.gz", "train_partial.csv.gz"):
        assert (cdata.SHIPPED_ROOT / "mp_20" / name).is_file()
    assert (cdata.SHIPPED_ROOT / "PROVENANCE.md").read_text().count("CC BY 4.0") >= 1


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_shipped_file_is_refused_in_one_line_naming_it(tmp_path, monkeypatch, damage):
    copy = tmp_path / "crystals" / "mp_20"
    shutil.copytree(cdata.SHIPPED_ROOT / "mp_20", copy)
    target = copy / "val.csv.gz"
    data = bytearray(target.read_bytes())
    if damage == "truncate":
        data = data[:len(data) // 2]
    else:
        data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    monkeypatch.setenv("UNITE_SCI_CRYSTAL_DATA", str(tmp_path / "crystals"))
    with pytest.raises(DataError, match=r"val\.csv\.gz: sha256 [0-9a-f]{12}\.\.\. differs from") as err:
        load_split("mp20", "train", cache_dir="", limit=2, progress=False)
    assert "\n" not in str(err.value)
    assert load_split("mp20", "test", cache_dir="", limit=1, progress=False).protocol == "MP-20 offline"


@pytest.mark.parametrize("dataset, n_val, n_test", [("perov5", 3787, 3785), ("carbon24", 2032, 2030)])
def test_the_other_shipped_sets_match_their_checksums(dataset, n_val, n_test):
    folder = cdata.SHIPPED_ROOT / cdata.DATASETS[dataset].folder
    for split, n in (("val", n_val), ("test", n_test)):
        cdata.verify_checksum(folder / f"{split}.csv.gz")
        assert len(cdata.read_rows(folder / f"{split}.csv.gz")) == n


def test_a_first_parse_says_how_long_it_will_take(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cdata, "PARSE_S_PER_CIF", 0.5)  # 40 CIFs: 20 s on one process, worth a line
    parse_file(HERE / "mp20_val_40.csv.gz", 20, cache_dir=tmp_path, progress=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["note: building the parsed crystals of mp20_val_40.csv.gz (40 CIFs, 1 process) for this "
                   "data set's first use: about 20 s, once"]
    parse_file(HERE / "mp20_val_40.csv.gz", 20, cache_dir=tmp_path, progress=False)
    assert capsys.readouterr().err == ""  # cached: silent


# ----------------------------------------------------------------------------- the extended protocol
def _extended_root(tmp_path: Path) -> Path:
    """The offline fixture plus a ``lemat/train.csv`` holding the six canonical test rows."""
    root = tmp_path / "root"
    shutil.copytree(HERE / "offline", root)
    (root / "lemat").mkdir()
    shutil.copy(HERE / "mp20_test_rows.csv", root / "lemat" / "train.csv")
    return root


def test_extra_training_crystals_join_train_only_and_rename_the_protocol(tmp_path):
    root = _extended_root(tmp_path)
    kw = dict(offline_root=root, cache_dir=tmp_path / "cache", progress=False, holdout_fraction=0.25, seed=3)
    plain = {s: load_split("mp20", s, **kw) for s in ("train", "val", "test")}
    ext = {s: load_split("mp20", s, extra_train="lemat", **kw) for s in ("train", "val", "test")}
    extra_ids = [r["material_id"] for r in cdata.read_rows(root / "lemat" / "train.csv")]
    assert ext["train"].ids == plain["train"].ids + extra_ids  # the data set's own first, none held out
    assert ext["val"].ids == plain["val"].ids and ext["test"].ids == plain["test"].ids
    assert {c.protocol for c in ext.values()} == {"MP-20 offline + LeMat"}
    assert {c.protocol for c in plain.values()} == {"MP-20 offline"}
    assert ext["train"].lengths.shape == (len(plain["train"]) + 6, 3)
    first = load_split("mp20", "train", extra_train="lemat", limit=4, **kw)  # a limit takes the data set's first
    assert first.ids == plain["train"].ids[:4]


def test_extra_training_crystals_refuse_unknown_names_and_other_data_sets(tmp_path):
    with pytest.raises(ConfigError, match="extra_train='oqmd': available for mp20: none, lemat"):
        load_split("mp20", "train", extra_train="oqmd", cache_dir="")
    with pytest.raises(ConfigError, match="extra_train='lemat'"):
        load_split("perov5", "train", extra_train="lemat", cache_dir="")


def test_the_shipped_lemat_file_matches_its_checksum_and_holds_no_mp20_crystal():
    path = cdata.SHIPPED_ROOT / "lemat" / "train.csv.gz"
    cdata.verify_checksum(path)
    rows = cdata.read_rows(path)
    known = {r["material_id"] for name in ("test", "val", "train_partial")
             for r in cdata.read_rows(cdata.SHIPPED_ROOT / "mp_20" / f"{name}.csv.gz")}
    assert len(rows) > 4000 and not known & {r["material_id"] for r in rows}
    assert {r["source"].split("/")[1] for r in rows} == {"mp", "alexandria", "oqmd", "aflow"}


def test_build_lemat_keeps_only_new_crystals(tmp_path):
    import tarfile

    from unite_sci_modalities.crystals.build_lemat import build
    rows = cdata.read_rows(HERE / "mp20_test_rows.csv")
    parsed = parse_file(HERE / "mp20_test_rows.csv", 20, cache_dir="", progress=False)
    z, frac = parsed.items(np.arange(6))

    def crystals(i: int) -> Crystals:
        return Crystals([z[i]], [frac[i]], parsed.lengths[i:i + 1], parsed.angles[i:i + 1], [str(i)], "ref")

    known = cdata.read_rows(cdata.SHIPPED_ROOT / "mp_20" / "val.csv.gz")[0]["material_id"]
    members = {"mp": [(f"mp_{known}", 1), ("mp_mp-0000001", 0)], "alexandria": [("alexandria_x", 2)],
               "oqmd": [("oqmd_a", 3), ("oqmd_b", 4)], "aflow": [("JVASP-1_y", 3)]}
    for db, items in members.items():
        folder = tmp_path / db
        folder.mkdir()
        for stem, i in items:
            (folder / f"{stem}.cif").write_text(rows[i]["cif"])
        with tarfile.open(tmp_path / f"lemat_{db}.tar.gz", "w:gz") as tar:
            tar.add(folder, arcname=db)
    counts = build(tmp_path, tmp_path / "out", references={"test": crystals(0), "train": crystals(2)})
    assert counts == {"mp20_id": 1, "matches_test": 1, "matches_train": 1, "matches_repeat": 1, "kept": 2}
    out = cdata.read_rows(tmp_path / "out" / "train.csv.gz")
    assert [r["material_id"] for r in out] == ["oqmd_a", "oqmd_b"] and out[0]["cif"] == rows[3]["cif"]
    assert out[0]["source"] == "LeMat-Bulk/oqmd"
    cdata.verify_checksum(tmp_path / "out" / "train.csv.gz")  # the SHA256SUMS it wrote holds
