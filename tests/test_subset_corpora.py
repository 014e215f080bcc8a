"""More corpus inputs (saved HF datasets, litdata dirs of text) and the presets of the recipes' corpora, each in its
real on-disk layout, with a few records of real English text (Python's pydoc_data/topics.py, PSF licence)."""

import json
import os
from unittest import mock

import pytest

from litgpt_inheritune.errors import InherituneError
from litgpt_inheritune.data.subset import PRESETS, corpus_units, get_preset, iter_documents, lookup


def texts(n: int, start: int = 0) -> list[str]:
    from pydoc_data.topics import topics

    names = sorted(topics)
    return [topics[names[i % len(names)]] for i in range(start, start + n)]


def jsonl(records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def build(corpus, reference, out, **kwargs):
    from litgpt_inheritune.data.sampler import build_subset

    kwargs.setdefault("val_tokens", 300)
    kwargs.setdefault("num_workers", 1)
    return build_subset(corpus, reference, out, progress=False, **kwargs)


# ------------------------------------------------------------------------------------------- saved HF datasets


def test_saved_dataset_and_dataset_dict_are_read_per_arrow_file(tmp_path):
    import datasets

    rows = {"text": texts(9), "dump": [f"CC-MAIN-2024-{i % 2}" for i in range(9)]}
    dataset = datasets.Dataset.from_dict(rows)
    dataset.save_to_disk(str(tmp_path / "one"), num_shards=2)
    datasets.DatasetDict({"train": dataset, "validation": dataset.select(range(3))}).save_to_disk(str(tmp_path / "dd"))

    docs = list(iter_documents(tmp_path / "one", domain_key="dump"))
    assert [d.text for d in docs] == [row["text"] for row in datasets.load_from_disk(str(tmp_path / "one"))]
    assert [d.source for d in docs] == ["data-00000-of-00002.arrow"] * 5 + ["data-00001-of-00002.arrow"] * 4
    assert [d.index for d in docs] == [0, 1, 2, 3, 4, 0, 1, 2, 3] and docs[1].domain == "CC-MAIN-2024-1"

    assert [d.source for d in iter_documents(tmp_path / "dd")][0] == "train/data-00000-of-00001.arrow"
    validation = list(iter_documents(tmp_path / "dd", split="validation"))
    assert [d.text for d in validation] == texts(3) and validation[0].source.startswith("validation/")
    with pytest.raises(InherituneError, match=r"no split 'test' .*--split"):
        corpus_units(tmp_path / "dd", split="test")


def _optimize(fn, inputs, out, **kwargs):
    from litdata import optimize

    staging = out.parent.parent / f"staging-{out.name}"  # outside the corpus
    private = {"DATA_OPTIMIZER_CACHE_FOLDER": str(staging / "c"), "DATA_OPTIMIZER_DATA_CACHE_FOLDER": str(staging / "d")}
    with mock.patch.dict(os.environ, private):
        optimize(fn=fn, inputs=inputs, output_dir=str(out), num_workers=1, chunk_bytes="1MB", start_method="fork",
                 **kwargs)


def test_litdata_dir_of_text_is_read_and_of_token_ids_is_refused(tmp_path, tiny_reference):
    import datasets
    import torch
    from litdata.streaming import TokensLoader

    records = [{"text": t, "meta": {"redpajama_set_name": "RedPajamaBook"}} for t in texts(4)]
    _optimize(lambda i: records[i], list(range(4)), tmp_path / "corpus" / "text")
    docs = list(iter_documents(tmp_path / "corpus", domain_key="meta.redpajama_set_name"))
    assert [d.text for d in docs] == texts(4) and {d.source for d in docs} == {"text"}
    assert docs[2].index == 2 and docs[0].domain == "RedPajamaBook"
    # Next to a saved dataset, read by two forked workers.
    datasets.Dataset.from_dict({"text": texts(6, 4)}).save_to_disk(str(tmp_path / "corpus" / "saved"), num_shards=2)
    summary = build(tmp_path / "corpus", tiny_reference, tmp_path / "out", tokens=2000, val_tokens=0,
                    num_workers=2)
    assert summary["corpus_documents"] == 10 and summary["train"]["tokens"] >= 2000

    def ids(i):
        yield torch.arange(10, dtype=torch.int32)

    _optimize(ids, [0, 1], tmp_path / "t" / "tokens", item_loader=TokensLoader())
    with pytest.raises(InherituneError, match=r"holds token ids .*cannot be re-tokenized"):
        list(iter_documents(tmp_path / "t" / "tokens"))


# ------------------------------------------------------------------------------------------- presets


def test_meta_given_as_a_json_string_is_looked_into():
    record = {"text": "x", "meta": json.dumps({"redpajama_set_name": "RedPajamaC4"})}
    assert lookup(record, "meta.redpajama_set_name") == "RedPajamaC4"
    assert lookup({"meta": "{not json"}, "meta.x") is None
    with pytest.raises(InherituneError, match="fineweb_edu"):
        get_preset("fineweb")


@pytest.fixture
def redpajama_v1(tmp_path):
    """The full release as `wget -i urls.txt` lays it out; each source's own meta (none names the set)."""
    import zstandard

    root = tmp_path / "redpajama"
    t = iter(texts(28))
    layout = {
        "arxiv/arxiv_023827cd-7ee8-42e6-aa7b-661731f4c70f.jsonl":
            lambda: {"text": next(t), "meta": {"timestamp": "2023-03-01", "yymm": "2303", "arxiv_id": "2303.00001",
                                               "language": "en", "url": "https://arxiv.org/abs/2303.00001"}},
        "book/book.jsonl": lambda: {"text": next(t), "meta": {"short_book_title": "A", "publication_date": 1900}},
        "c4/c4-train.00000-of-01024.jsonl":
            lambda: {"text": next(t), "meta": {"timestamp": "2019-04-25T12:57:54Z", "url": "https://e.org",
                                               "language": "en", "source": "c4"}},
        "github/filtered_a777da5620f1467f8df3616b17d533dc.sampled.jsonl":
            lambda: {"text": next(t), "meta": {"repo_name": "a/b", "path": "x.py", "source": "github"}},
        "stackexchange/stackexchange.jsonl":
            lambda: {"text": next(t), "meta": {"language": "en", "source": "stackexchange", "question_score": "3"}},
        "wikipedia/wiki.jsonl": lambda: {"text": next(t), "meta": {"title": "T", "language": "en"}},
    }
    for name, record in layout.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(jsonl(record() for _ in range(4)))
    cc = root / "common_crawl" / "2019-30" / "en_head_0000.json.gz.dedup.classifier.jsonl.zst"
    cc.parent.mkdir(parents=True)
    records = [{"text": next(t), "pred_label": "__label__wiki", "pred_label_prob": 0.6, "wiki_prob": 0.6,
                "source": f"cc/2019-30/en_head_0000.json.gz/line{i}"} for i in range(4)]
    cc.write_bytes(zstandard.ZstdCompressor().compress(jsonl(records).encode()))
    (root / "urls.txt").write_text("https://data.together.xyz/redpajama-data-1T/v1.0.0/book/book.jsonl\n")
    return root


def test_redpajama_v1_preset_takes_the_domain_from_the_top_dir(tmp_path, redpajama_v1, tiny_reference):
    sets = sorted(set(PRESETS["redpajama_v1"].path_domains.values()))
    docs = list(iter_documents(redpajama_v1, preset=get_preset("redpajama_v1"),
                               domain_key="meta.redpajama_set_name"))
    assert len(docs) == 28 and sorted({d.domain for d in docs}) == sets  # urls.txt is not a document
    assert [d.domain for d in docs if d.source.startswith("common_crawl/")] == ["RedPajamaCommonCrawl"] * 4

    summary = build(redpajama_v1, tiny_reference, tmp_path / "out", tokens=3000, preset="redpajama_v1",
                    split_by_domain=True, val_tokens=100)
    assert sorted(summary["domains"]) == sets and summary["corpus_documents"] == 28
    for name, part in summary["domains"].items():
        assert part["dir"] == name and (tmp_path / "out" / "train" / name / "index.json").is_file()


def test_redpajama_v1_sample_preset_takes_the_domain_from_the_file_name(tmp_path, tiny_reference):
    root = tmp_path / "RedPajama-Data-1T-Sample"
    root.mkdir()
    names = ["arxiv_sample.jsonl", "book_sample.jsonl", "c4_sample.jsonl", "cc_2019-30_sample.jsonl",
             "cc_2023-06_sample.jsonl", "github_sample.jsonl", "stackexchange_sample.jsonl", "wikipedia_sample.jsonl"]
    for i, name in enumerate(names):
        meta = {"url": "https://e.org", "timestamp": "2023", "source": name.split("_")[0], "language": "en"}
        (root / name).write_text(jsonl({"text": t, "meta": meta} for t in texts(3, 3 * i)))
    # A copy whose meta names the set (as SlimPajama's records do) keeps that name.
    (root / "wikipedia_sample.jsonl").write_text(
        jsonl({"text": t, "meta": {"redpajama_set_name": "RedPajamaWikipedia"}} for t in texts(3, 21)))
    summary = build(root, tiny_reference, tmp_path / "out", tokens=3000, preset="redpajama_v1_sample")
    per_domain = summary["train"]["tokens_per_domain"]
    assert summary["corpus_documents"] == 24 and summary["domain_key"] == "meta.redpajama_set_name"
    assert set(per_domain) <= set(PRESETS["redpajama_v1"].path_domains.values()) and len(per_domain) >= 4


def test_openwebtext_preset_reads_save_to_disk_and_the_original_tar_xz(tmp_path, tiny_reference):
    import io
    import tarfile

    import datasets

    datasets.Dataset.from_dict({"text": texts(10)}).save_to_disk(str(tmp_path / "saved"))
    original = tmp_path / "openwebtext"
    original.mkdir()
    for part, start in (("urlsf_subset00-1_data.xz", 0), ("urlsf_subset00-2_data.xz", 5)):
        with tarfile.open(original / part, "w:xz") as archive:
            for i, text in enumerate(texts(5, start)):
                data = text.encode()
                info = tarfile.TarInfo(f"0{start + i:06d}-{part[:8]}.txt")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))

    from_tar = list(iter_documents(original, preset=get_preset("openwebtext")))
    assert [d.text for d in from_tar] == texts(10) and from_tar[5].source == "urlsf_subset00-2_data.xz"
    a = build(tmp_path / "saved", tiny_reference, tmp_path / "a", tokens=2000, preset="openwebtext")
    b = build(original, tiny_reference, tmp_path / "b", tokens=2000, preset="openwebtext")
    assert a["corpus_documents"] == b["corpus_documents"] == 10 and a["train"]["tokens"] >= 2000


def test_fineweb_edu_preset_reads_the_parquet_layout_with_dump_as_domain(tmp_path, tiny_reference):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "fineweb-edu"

    def rows(dump, start, n):
        return [{"text": t, "id": f"<urn:uuid:{start + i}>", "dump": dump, "url": "https://e.org",
                 "file_path": f"s3://commoncrawl/crawl-data/{dump}/x.warc.gz", "language": "en",
                 "language_score": 0.95, "token_count": 100, "score": 3.1, "int_score": 3}
                for i, t in enumerate(texts(n, start))]

    for dump, start in (("CC-MAIN-2013-20", 0), ("CC-MAIN-2024-10", 6)):
        (root / "data" / dump).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows(dump, start, 6)), root / "data" / dump / "train-00000-of-00001.parquet")
    (root / "README.md").write_text("card")
    summary = build(root, tiny_reference, tmp_path / "out", tokens=2000, preset="fineweb_edu", stratify=True)
    assert summary["domain_key"] == "dump" and summary["stratify"] == "natural"
    assert set(summary["train"]["tokens_per_domain"]) == {"CC-MAIN-2013-20", "CC-MAIN-2024-10"}

    sample = tmp_path / "sample" / "10BT"
    sample.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows("CC-MAIN-2024-10", 0, 5)), sample / "000_00000.parquet")
    docs = list(iter_documents(tmp_path / "sample", preset=get_preset("fineweb_edu"), domain_key="dump"))
    assert [d.source for d in docs] == ["10BT/000_00000.parquet"] * 5 and docs[0].domain == "CC-MAIN-2024-10"
