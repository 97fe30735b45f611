"""First use says what it builds: one line (what, why, about how long, where) before a reference build,
nothing when the cached file is reused; the cache is written whole."""
from __future__ import annotations

from pathlib import Path

import pytest

from test_qm9_metrics import PS, ZS
from unite_sci.files import announce_build
from unite_sci_modalities.molecules import geometry


@pytest.mark.parametrize("seconds,about", [(0.2, "1 s"), (42.4, "42 s"), (89, "89 s"), (150, "2 min"), (3600, "60 min")])
def test_the_notice_names_what_why_how_long_and_where(capsys, seconds, about):
    announce_build("the thing (3 molecules)", "novelty", seconds, Path("/c/x.txt"))
    assert capsys.readouterr().err == f"note: building the thing (3 molecules) for novelty: about {about}, once; " \
                                      "cached in /c/x.txt\n"


def test_geometry_reference_build_is_announced_once_and_cached(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(geometry, "NOTICE_MIN_ITEMS", 2)  # the real threshold is a thousand molecules
    cache = tmp_path / "geometry_train_3.npz"
    first = geometry.reference(ZS[:3], PS[:3], cache)
    err = capsys.readouterr().err
    notes = [ln for ln in err.splitlines() if ln.startswith("note:")]
    assert "geometry reference" in err.replace(notes[0], "")  # and a progress bar
    about = max(1, round(3 * geometry.MEASURE_CPU_S))
    assert notes == [f"note: building the geometry reference (3 training molecules) for the geometry metrics: "
                     f"about {about} s, once; cached in {cache}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [cache.name]  # no temporary file left
    again = geometry.reference(ZS[:3], PS[:3], cache)  # cached: no notice, the same numbers
    assert "note:" not in capsys.readouterr().err
    assert (again.bond_length == first.bond_length).all() and again.num_molecules == first.num_molecules == 3
