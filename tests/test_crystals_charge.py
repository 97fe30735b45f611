"""The opt-in charge-balance repair (``data.type_decode=charge_balanced``, issue #11): the cheapest change by
the model's own log-probabilities that passes SMACT, nothing when already balanced or when nothing passes."""
import torch

from modalities.crystals.charge import balance_batch, balanced
from modalities.crystals.metrics import composition_key, smact_validity


def logp_of(prefs):
    """prefs: per atom {Z: log-probability}; every other element at -20."""
    lp = torch.full((len(prefs), 100), -20.0)
    for i, row in enumerate(prefs):
        for z, v in row.items():
            lp[i, z - 1] = v
    return lp


def passes(z):
    return smact_validity(*composition_key(z.numpy()))[0]


def test_a_balanced_composition_is_left_alone():
    z = torch.tensor([11, 17])
    out, changed = balanced(z, logp_of([{11: -0.1, 12: -0.5}, {17: -0.1, 9: -0.2}]))
    assert changed == 0 and torch.equal(out, z)


def test_the_cheapest_passing_change_wins():
    z = torch.tensor([11, 17, 17])  # NaCl2: no oxidation states balance it
    assert not passes(z)
    # atom 2's second choice (O) costs 0.9, atom 1's (Na) 1.9: NaClO passes, so atom 2 changes
    lp = logp_of([{11: -0.1}, {17: -0.1, 11: -2.0}, {17: -0.1, 8: -1.0}])
    out, changed = balanced(z, lp)
    assert changed == 1 and out.tolist() == [11, 17, 8] and passes(out)


def test_nothing_passes_keeps_the_argmax():
    z = torch.tensor([2, 2, 10])  # He2Ne: helium has no oxidation state, so every composition with it fails
    lp = logp_of([{2: -0.1, 10: -1.0}, {2: -0.1, 18: -1.0}, {10: -0.1, 18: -1.0}])
    out, changed = balanced(z, lp, max_tries=3)  # the three single changes all keep a helium
    assert changed == 0 and torch.equal(out, z)


def test_batches_repair_real_atoms_and_leave_padding():
    types = torch.tensor([[11, 17, 17, 1], [11, 17, 5, 5]])
    logits = torch.stack([torch.cat([logp_of([{11: -0.1}, {17: -0.1, 11: -2.0}, {17: -0.1, 8: -1.0}]),
                                     logp_of([{1: 0.0}])]),
                          logp_of([{11: -0.1}, {17: -0.1}, {5: 0.0}, {5: 0.0}])])
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    out = balance_batch(types, logits, mask, "smact2_default")
    assert out[0].tolist() == [11, 17, 8, 1] and out[1].tolist() == [11, 17, 5, 5]


def test_the_repair_acts_on_generated_crystals_only():
    from test_crystals_adapter import make

    a, _, _ = make("data.type_decode=charge_balanced")
    na_cl2 = logp_of([{11: -0.1}, {17: -0.1, 11: -2.0}, {17: -0.1, 8: -1.0}]).unsqueeze(0)
    out = {"type_logits": na_cl2, "lattice": torch.zeros(1, 6), "sincos": torch.zeros(1, 3, 6)}
    mask = torch.ones(1, 3, dtype=torch.bool)
    assert a.decode_types(out, mask).tolist() == [[11, 17, 17]]  # a reconstruction keeps the argmax
    finished = a.finish_samples(out, mask)
    assert a.decode_types(finished, mask).tolist() == [[11, 17, 8]]
    assert a.to_domain(finished, mask)[0].z.tolist() == [11, 17, 8]
    plain, _, _ = make()
    assert plain.finish_samples(out, mask) is out  # off by default


def test_the_core_calls_the_finishing_hook_when_generating_and_never_when_reconstructing(tmp_path):
    from unite_sci.engine import generate, reconstruct_items

    from test_trainer import make_trainer

    tr = make_trainer(tmp_path, "train.max_steps=1")
    calls = []
    tr.adapter.finish_samples = lambda out, mask: calls.append(len(next(iter(out.values())))) or out
    samples, _ = generate(tr.model.eval(), tr.adapter, tr.cfg.sample, num=5, progress=False)
    assert len(samples) == 5 and sum(calls) == 5
    test = tr.adapter.build_splits()["test"]
    reconstruct_items(tr.model, tr.adapter, [test[i] for i in range(4)], progress=False)
    assert sum(calls) == 5
