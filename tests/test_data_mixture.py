"""The multi-domain mixture data module: weighted draws, live DBL weights, checkpointed state, training end to end."""

import json
import os
import re
from pathlib import Path

import pytest
import torch

from litgpt_inheritune.data.mixture import DBL_STATE, DomainMixture, domain_tokens
from litgpt_inheritune.errors import InherituneError

# Tokens tell the domain a sample came from: "low" uses ids below 100, "high" ids from 1000 up.
RANGES = {"high": (1000, 1100), "low": (0, 100)}


def write_stream(directory: Path, documents: list[torch.Tensor]) -> None:
    """A litdata-optimized token stream, as `litgpt inheritune_data --split_by_domain true` writes one."""
    from litdata import optimize
    from litdata.streaming import TokensLoader

    from litgpt_inheritune.checks import private_litdata_cache

    def emit(i):
        yield documents[i]

    with private_litdata_cache():  # litdata's staging area, private to this call and removed after it
        optimize(fn=emit, inputs=list(range(len(documents))), output_dir=str(directory), num_workers=1,
                 chunk_bytes="64KB", item_loader=TokensLoader(), start_method="fork")


@pytest.fixture
def marked(tmp_path) -> Path:
    """Two domains whose token ids say where they come from; "low" has twice the tokens of "high"."""
    generator = torch.Generator().manual_seed(0)
    root = tmp_path / "mixture"
    for name, (lo, hi) in RANGES.items():
        n_docs = 40 if name == "low" else 20
        for split, count in (("train", n_docs), ("val", 4)):
            docs = [torch.randint(lo, hi, (64,), generator=generator, dtype=torch.int32) for _ in range(count)]
            write_stream(root / split / name, docs)
    return root


def domain_of(sample: torch.Tensor) -> str:
    return "low" if int(sample.max()) < 100 else "high"


def draw(iterator, n: int) -> list[str]:
    return [domain_of(next(iterator)[0]) for _ in range(n)]


def test_default_weights_follow_token_counts(marked):
    data = DomainMixture(marked, num_workers=0)
    assert domain_tokens(marked / "train" / "low") == 40 * 64
    assert data.initial_weights() == pytest.approx({"high": 1 / 3, "low": 2 / 3})
    data.connect(batch_size=1, max_seq_length=15)
    loader = data.train_dataloader()
    assert len(loader) == 60 * 64 // 16  # an epoch's expected size: the domains' samples together
    seen = draw(iter(loader), 150)
    assert 0.55 < seen.count("low") / len(seen) < 0.8


@pytest.mark.parametrize("num_workers", [0, 1])
def test_weight_updates_reach_the_draws_at_once(marked, num_workers):
    data = DomainMixture(marked, weights={"low": 1.0, "high": 0.0}, num_workers=num_workers)
    data.connect(batch_size=1, max_seq_length=15)
    iterator = iter(data.train_dataloader())
    assert set(draw(iterator, 20)) == {"low"}
    data._mixture.set_weights({"low": 0.0, "high": 1.0})  # what a DBL update does, in shared memory
    seen = draw(iterator, 30)
    prefetched = 2 * num_workers  # batches a worker had already drawn
    assert set(seen[prefetched:]) == {"high"}


def test_state_resumes_each_domain_where_it_stopped(marked):
    def loader_with(weights):
        data = DomainMixture(marked, num_workers=0, seed=7)
        data.connect(batch_size=2, max_seq_length=15)
        loader = data.train_dataloader()
        return data, loader

    data, loader = loader_with(None)
    iterator = iter(loader)
    for _ in range(9):
        next(iterator)
    data._mixture.set_weights({"low": 0.25, "high": 0.75})
    data._mixture.dbl["history"].append({"iter": 9, "losses": {"low": 1.0, "high": 2.0}})
    state = loader.state_dict()
    assert state["dataset"][DBL_STATE]["weights"] == [0.75, 0.25]
    expected = [next(iterator) for _ in range(8)]

    resumed_data, resumed = loader_with(None)
    resumed.load_state_dict(state)
    assert resumed_data._mixture.weights() == {"high": 0.75, "low": 0.25}
    assert resumed_data._mixture.dbl["history"][-1]["iter"] == 9
    got = [b for _, b in zip(range(8), iter(resumed))]
    # The same samples that the uninterrupted run drew next: nothing replayed, nothing skipped.
    assert all(torch.equal(a, b) for a, b in zip(expected, got))


def test_the_runs_seed_decides_the_draws_unless_the_mixture_has_its_own(marked):
    """Arms over seeds must see different data orders: the run's --seed reaches the mixture's draws and shuffles."""
    from litgpt_inheritune.training import seeded_train_order

    def first_batches(run_seed: int, **kwargs) -> list[torch.Tensor]:
        data = DomainMixture(marked, num_workers=0, **kwargs)
        data.connect(batch_size=2, max_seq_length=15)
        with seeded_train_order(data, run_seed):  # as `litgpt inheritune` trains
            iterator = iter(data.train_dataloader())
            return [next(iterator) for _ in range(6)]

    def same(a, b) -> bool:
        return all(torch.equal(x, y) for x, y in zip(a, b))

    assert same(first_batches(1), first_batches(1))
    assert not same(first_batches(1), first_batches(2))
    assert same(first_batches(1, seed=7), first_batches(2, seed=7))  # --data.seed, when given, wins


def test_bad_mixture_input_is_one_line(marked, tmp_path):
    cases = [
        (dict(weights={"low": 1.0, "web": 1.0}), "unknown domain(s) ['web']"),
        (dict(reference_losses={"low": 2.0}), "lacks domain(s) ['high']"),
        (dict(weights={"low": -1.0}), "must be finite and >= 0"),
        (dict(smoothing=1.0), "smoothing must be in [0, 1)"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InherituneError, match=re.escape(message)) as info:
            DomainMixture(marked, **kwargs).check()
        assert "\n" not in str(info.value)
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(InherituneError, match="holds no domain dirs"):
        DomainMixture(tmp_path / "empty").check()
    import shutil

    shutil.rmtree(marked / "val" / "high")
    with pytest.raises(InherituneError, match="val/ has"):
        DomainMixture(marked).check()


# --- training end to end: real text, the real LitGPT loop -------------------------------------------------------


@pytest.fixture(scope="module")
def text_mixture(tmp_path_factory, smollm2_tokenizer) -> Path:
    """Two real domains tokenized with SmolLM2's tokenizer: Python reference prose and Python source code."""
    import inspect
    import json as json_module

    from litgpt import Tokenizer
    from pydoc_data.topics import topics

    tokenizer = Tokenizer(smollm2_tokenizer)
    prose = [topics[name] for name in sorted(topics)[:40]]
    code = [inspect.getsource(module) for module in (json_module.decoder, json_module.encoder, os.path, inspect)]
    code = [piece for text in code for piece in text.split("\n\n\n") if len(piece) > 200][:40]
    root = tmp_path_factory.mktemp("text") / "mixture"
    for name, texts in (("code", code), ("prose", prose)):
        docs = [tokenizer.encode(t, bos=False, eos=True).to(torch.int32) for t in texts]
        write_stream(root / "train" / name, docs[4:])
        write_stream(root / "val" / name, docs[:4])
    return root


def train_mixture(reference: Path, data_path: Path, out_dir: Path, max_tokens: int, **data_kwargs):
    from litgpt.args import EvalArgs, LogArgs, TrainArgs

    from litgpt_inheritune.training import run

    resume = data_kwargs.pop("resume", False)
    data = DomainMixture(data_path, num_workers=0, **data_kwargs)
    return run(
        reference_dir=reference, n_layers=2, layers=None, parts=None, out_dir=out_dir, precision="32-true",
        resume=resume, data=data,
        train=TrainArgs(save_interval=2, log_interval=1, global_batch_size=2, micro_batch_size=2, lr_warmup_steps=1,
                        max_tokens=max_tokens, max_seq_length=32, max_norm=1.0, min_lr=1e-4),
        eval=EvalArgs(interval=2, max_iters=2, initial_validation=False), log=LogArgs(),
        optimizer={"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3}}, devices=1, num_nodes=1,
        tokenizer_dir=None, logger_name="csv", seed=1, compile=False, overwrite=False,
    )


def history(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "domain_weights.jsonl").read_text().splitlines()]


def test_dbl_moves_weight_to_the_lagging_domain_and_is_checkpointed(tiny_reference, text_mixture, tmp_path):
    # A constructed gap: the child (loss ~10.8, random-weight reference) lags the targets on code, not on prose.
    references = {"code": 9.0, "prose": 11.0}
    out = tmp_path / "run"
    train_mixture(tiny_reference, text_mixture, out, max_tokens=8 * 2 * 32, dynamic=True, reference_losses=references)
    rows = history(out)
    assert [r["iter"] for r in rows] == [2, 4, 6, 8, 8]  # every eval.interval, then LitGPT's final validation
    start = DomainMixture(text_mixture).initial_weights()
    assert rows[0]["weights"]["code"] > start["code"]
    code = [r["weights"]["code"] for r in rows]
    assert all(b >= a - 1e-12 for a, b in zip(code, code[1:])) and code[-1] > 0.9  # it only grows
    assert all(v is not None and v == v for r in rows for v in r["losses"].values())  # no NaN
    saved = torch.load(out / "step-00000004" / "lit_model.pth", weights_only=False)["train_dataloader"]
    dbl = saved["dataset"][DBL_STATE]
    assert dbl["weights"] == pytest.approx([rows[1]["weights"][d] for d in dbl["domains"]])
    assert dbl["reference_losses"] == references
    logged = (out / "logs").rglob("metrics.csv")
    header = next(iter(logged)).read_text().splitlines()[0]
    assert "val_loss/code" in header and "domain_weight/prose" in header


def test_resumed_dbl_run_continues_with_the_saved_weights(tiny_reference, text_mixture, tmp_path):
    import shutil

    references = {"code": 9.0, "prose": 11.0}
    whole = tmp_path / "whole"
    train_mixture(tiny_reference, text_mixture, whole, max_tokens=8 * 2 * 32, dynamic=True, reference_losses=references)
    parted = tmp_path / "parted"
    shutil.copytree(whole, parted)
    shutil.rmtree(parted / "final")
    for step in ("step-00000004", "step-00000006", "step-00000008"):
        shutil.rmtree(parted / step)  # as if interrupted after step 2's checkpoint
    (parted / "domain_weights.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history(parted)[:1]))
    train_mixture(tiny_reference, text_mixture, parted, max_tokens=8 * 2 * 32, dynamic=True,
                  reference_losses=references, resume=True)
    resumed, uninterrupted = history(parted), history(whole)
    assert [r["iter"] for r in resumed] == [r["iter"] for r in uninterrupted]
    # Same weights, same data order, same model: the resumed run retraces the uninterrupted one.
    for a, b in zip(resumed, uninterrupted):
        assert a["weights"] == pytest.approx(b["weights"], rel=1e-4)


def test_reference_losses_are_measured_when_not_given(tiny_reference, text_mixture, tmp_path):
    import yaml

    out = tmp_path / "measured"
    train_mixture(tiny_reference, text_mixture, out, max_tokens=2 * 2 * 32, dynamic=True)
    recorded = yaml.safe_load((out / "final" / "hyperparameters.yaml").read_text())["data"]["init_args"]
    assert set(recorded["reference_losses"]) == {"code", "prose"}
    from litgpt_inheritune.data.mixture import measure_reference_losses

    import lightning as L

    again = DomainMixture(text_mixture, num_workers=0)
    again.connect(batch_size=2, max_seq_length=32)
    fabric = L.Fabric(accelerator="cpu", devices=1, precision="32-true", loggers=[])  # the run's: one process, 32-true
    assert recorded["reference_losses"] == pytest.approx(measure_reference_losses(fabric, tiny_reference, again, 2, 32))
    first = history(out)[0]
    assert first["weights"] != pytest.approx(again.initial_weights())  # they drove an update


def test_inheritune_data_split_by_domain_feeds_the_mixture(tiny_reference, tmp_path):
    """`litgpt inheritune_data --split_by_domain true` on a RedPajama-v1-style corpus, then DBL training on it."""
    import inspect
    import json as json_module

    from pydoc_data.topics import topics

    from litgpt_inheritune.data.sampler import build_subset

    code = [piece for module in (json_module.decoder, json_module.encoder, os.path, inspect)
            for piece in inspect.getsource(module).split("\n\n\n") if len(piece) > 200]
    records = [{"text": topics[name], "meta": {"redpajama_set_name": "RedPajamaWikipedia"}} for name in sorted(topics)[:60]]
    records += [{"text": piece, "meta": {"redpajama_set_name": "RedPajamaGithub"}} for piece in code[:60]]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "sample.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    data_dir = tmp_path / "subset"
    summary = build_subset(corpus, tiny_reference, data_dir, tokens=20_000, val_tokens=1_000,
                           domain_key="meta.redpajama_set_name", split_by_domain=True, num_workers=1, progress=False)
    assert set(summary["domains"]) == {"RedPajamaWikipedia", "RedPajamaGithub"}
    data = DomainMixture(data_dir)
    assert data.domains() == ["RedPajamaGithub", "RedPajamaWikipedia"]
    out = tmp_path / "run"
    train_mixture(tiny_reference, data_dir, out, max_tokens=4 * 2 * 32, dynamic=True)
    rows = history(out)
    assert rows and all(set(r["weights"]) == set(data.domains()) for r in rows)
    assert all(sum(r["weights"].values()) == pytest.approx(1.0) for r in rows)


def test_pruning_with_dynamic_batch_loading(tiny_reference, text_mixture, tmp_path):
    """`litgpt inheritune_prune` validates the target-shaped model per domain and moves the weights (Sheared-LLaMA's
    pruning stage runs with dynamic batch loading)."""
    from litgpt.args import EvalArgs, TrainArgs

    from litgpt_inheritune.pruning.training import prune

    data = DomainMixture(text_mixture, num_workers=0, dynamic=True, reference_losses={"code": 9.0, "prose": 11.0})
    out = tmp_path / "prune"
    final = prune(tiny_reference, {"n_layer": 4, "n_embd": 24}, data, out, 4,
                  TrainArgs(save_interval=2, log_interval=1, global_batch_size=2, micro_batch_size=2,
                            lr_warmup_steps=1, max_seq_length=32, max_norm=1.0, min_lr=1e-5),
                  EvalArgs(interval=2, max_iters=2), precision="32-true")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "domain_weights" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert all(set(r["domain_losses"]) == {"code", "prose"} for r in evals)
    start = DomainMixture(text_mixture).initial_weights()
    assert evals[0]["domain_weights"]["code"] > start["code"]
    assert evals[1]["domain_weights"]["code"] > evals[0]["domain_weights"]["code"]
    assert (final / "lit_model.pth").is_file()
