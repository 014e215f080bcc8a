"""Batched tokenizing writes the same bytes as encoding each document alone (the oracle kept here), on every core."""

import hashlib
import json
import os

import pytest

from litgpt_inheritune.errors import InherituneError


def files(directory):
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_reference):
    """Python's reference prose (pydoc_data/topics.py, PSF licence) in three .jsonl files and a parquet file, and
    special.jsonl of the documents LitGPT's encode treats specially, 4 of each: empty, starting with the BOS token's
    text, ending with the EOS token's text (LitGPT drops that EOS instead of adding one), both, and only those."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from litgpt import Tokenizer
    from pydoc_data.topics import topics

    tokenizer = Tokenizer(tiny_reference)
    bos, eos = (tokenizer.processor.id_to_token(i) for i in (tokenizer.bos_id, tokenizer.eos_id))
    texts = [topics[name] for name in sorted(topics)][:60]
    special = ["", bos + "def f(x):", "Ende." + eos, bos + "é 中文 " + eos, bos, eos]
    root = tmp_path_factory.mktemp("batched") / "corpus"
    root.mkdir()
    for i in range(3):
        lines = "".join(json.dumps({"text": t}) + "\n" for t in texts[20 * i:20 * i + 15])
        (root / f"part-{i}.jsonl").write_text(lines)
    pq.write_table(pa.Table.from_pylist([{"text": t} for i in range(3) for t in texts[20 * i + 15:20 * i + 20]]),
                   root / "part-3.parquet")
    (root / "special.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in special * 4))
    return root


def oracle(corpus, tokenizer_dir, out, budget=None, fraction=None, val_tokens=0, seed=0, chunk_bytes="8kB"):
    """The subset as the first version made it: each document encoded alone with LitGPT's ``Tokenizer.encode``, the
    splits written by litdata's ``optimize`` with one worker, index.json stamped with a hash of the chunks."""
    import numpy as np
    from litdata import optimize
    from litdata.streaming import TokensLoader
    from litgpt import Tokenizer

    from litgpt_inheritune.data.subset import Candidate, document_key, iter_documents, select

    tokenizer = Tokenizer(tokenizer_dir)
    ids, candidates = {}, []
    for doc in iter_documents(corpus):
        ids[(doc.source, doc.index)] = tokenizer.encode(doc.text, bos=False, eos=True)
        candidates.append(Candidate(document_key(seed, doc.source, doc.index), doc.source, doc.index,
                                    len(ids[(doc.source, doc.index)]), doc.domain))
    budget = budget or max(1, round(fraction * sum(c.n_tokens for c in candidates)))
    val = select(candidates, val_tokens) if val_tokens else []
    train = select([c for c in candidates if c not in val], budget)
    for name, chosen in (("train", train), ("val", val)):
        if not chosen:
            continue

        def emit(c):
            yield ids[(c.source, c.index)]

        optimize(fn=emit, inputs=chosen, output_dir=str(out / name), num_workers=1, chunk_bytes=chunk_bytes,
                 item_loader=TokensLoader(), start_method="fork")
        index = json.loads((out / name / "index.json").read_text())
        digest = hashlib.sha256(b"".join((out / name / c["filename"]).read_bytes() for c in index["chunks"]))
        index["updated_at"] = str(int(digest.hexdigest()[:12], 16))
        (out / name / "index.json").write_text(json.dumps(index, sort_keys=True))
    return np.concatenate([ids[(c.source, c.index)].numpy() for c in train]), train + val


@pytest.mark.parametrize("budget", [{"tokens": 6000, "num_workers": 2}, {"tokens": 6000, "num_workers": 2, "forked": 1},
                                    {"fraction": 0.9, "num_workers": 1}],
                         ids=["tokens-2-threads", "tokens-2-processes", "fraction-1-core"])
def test_shards_are_the_bytes_of_encoding_each_document_alone(tmp_path, corpus, tiny_reference, budget, monkeypatch,
                                                               capfd):
    from litgpt_inheritune.data import sampler

    monkeypatch.setattr(sampler, "BATCH_CHARS", 3000)  # several batches per file; workers fork after this
    budget = dict(budget)
    if budget.pop("forked", None):  # as on a machine of more cores than THREADED_CORES: a process per core
        monkeypatch.setattr(sampler, "THREADED_CORES", 1)
    options = {k: v for k, v in budget.items() if k != "num_workers"}
    summary = sampler.build_subset(corpus, tiny_reference, tmp_path / "new", val_tokens=800, seed=5,
                                   chunk_bytes="8kB", progress=False, **budget)
    expected, chosen = oracle(corpus, tiny_reference, tmp_path / "old", options.get("tokens"), options.get("fraction"),
                      val_tokens=800, seed=5)
    new = {p: d for p, d in files(tmp_path / "new").items() if p.name != "summary.json"}
    assert new == files(tmp_path / "old")
    assert len([p for p in new if p.parts[0] == "train" and p.suffix == ".bin"]) >= 2  # chunk boundaries compared
    assert summary["train"]["tokens"] == len(expected)
    workers = budget["num_workers"]
    assert summary["tokenizing"] == ({"processes": 1, "threads": workers} if sampler.THREADED_CORES >= workers
                                     else {"processes": workers, "threads": 1})
    if "fraction" in budget:  # every special kind is among the documents compared
        assert {c.index % 6 for c in chosen if c.source == "special.jsonl"} == set(range(6))
        assert summary["tokenized_documents"] == 84
    else:  # the candidate pass tokenized only documents that could be chosen
        assert summary["tokenized_documents"] < 40
    assert "TOKENIZERS_PARALLELISM" not in os.environ or os.environ["TOKENIZERS_PARALLELISM"] != "true"
    assert "huggingface/tokenizers" not in capfd.readouterr().err  # no warning about forking after its threads ran


def test_default_workers_are_every_usable_core_and_a_tokenizer_needs_an_eos(tmp_path, corpus, tiny_reference,
                                                                           monkeypatch):
    import shutil

    from litgpt_inheritune.data import sampler

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5, 7, 11}, raising=False)
    assert sampler.default_workers() == 5
    no_eos = tmp_path / "no-eos"
    no_eos.mkdir()
    shutil.copy(tiny_reference / "tokenizer.json", no_eos / "tokenizer.json")
    with pytest.raises(InherituneError, match="names no EOS token"):
        sampler.build_subset(corpus, no_eos, tmp_path / "out", tokens=100, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def sentencepiece_reference(tmp_path_factory):
    """A reference dir whose tokenizer is a SentencePiece model (as OpenLLaMA's): LitGPT's other backend, trained
    here on Python's reference prose (pydoc_data/topics.py, PSF licence), 400 pieces."""
    import io

    import sentencepiece
    from pydoc_data.topics import topics

    lines = [line for name in sorted(topics) for line in topics[name].splitlines() if line.strip()]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=400,
                                             model_type="bpe", character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2,
                                             pad_id=-1, minloglevel=2)
    directory = tmp_path_factory.mktemp("sentencepiece") / "reference"
    directory.mkdir()
    (directory / "tokenizer.model").write_bytes(model.getvalue())
    return directory


def test_a_sentencepiece_tokenizer_gives_the_same_bytes_too(tmp_path, corpus, sentencepiece_reference, monkeypatch):
    from litgpt import Tokenizer

    from litgpt_inheritune.data import sampler

    assert Tokenizer(sentencepiece_reference).backend == "sentencepiece"
    monkeypatch.setattr(sampler, "BATCH_CHARS", 3000)
    summary = sampler.build_subset(corpus, sentencepiece_reference, tmp_path / "new", fraction=0.9, val_tokens=800,
                                   seed=5, chunk_bytes="8kB", progress=False, num_workers=2)
    expected, _ = oracle(corpus, sentencepiece_reference, tmp_path / "old", fraction=0.9, val_tokens=800, seed=5)
    assert {p: d for p, d in files(tmp_path / "new").items() if p.name != "summary.json"} == files(tmp_path / "old")
    assert summary["train"]["tokens"] == len(expected) and summary["tokenized_documents"] == 84
