"""``qa_data`` from a dataset: a ``save_to_disk`` folder or a Hugging Face id (SQuAD → qa_1, HotpotQA → qa_2).

Everything is offline: the datasets are written by the test (``Dataset.from_dict(...).save_to_disk``);
a hub id is either absent from the cache (offline: one-line error) or served by a stand-in
``datasets.load_dataset`` that records what it was asked for.
"""

from __future__ import annotations

import json

import datasets
import pytest

from longctx.data.errors import DataError
from longctx.eval import ruler as eval_ruler
from longctx.eval.tasks import EvalSettings, check_task_inputs, read_qa_records, run_ruler
from longctx.train.stages import eval as eval_stage

LENGTH = 2500
"""Characters = tokens with the char tokenizer."""


def squad_columns(n: int = 6, tag: str = "") -> dict:
    """HF ``squad`` / ``squad_v2`` layout; the last row is unanswerable (v2: empty ``answers.text``)."""
    return {
        "id": [f"s{i}" for i in range(n)],
        "title": [f"Article{i // 2}" for i in range(n)],
        "context": [f"Gate {i} is kept by Keeper{tag}{i}." for i in range(n)],
        "question": [f"Who keeps gate {i}?" for i in range(n)],
        "answers": [{"text": [f"Keeper{tag}{i}"], "answer_start": [16]} for i in range(n - 1)]
        + [{"text": [], "answer_start": []}],
    }


def hotpot_columns(n: int = 6) -> dict:
    """HF ``hotpot_qa`` (distractor) layout: ``context: {title, sentences}``, sentences with their spaces."""
    return {
        "id": [f"h{i}" for i in range(n)],
        "question": [f"Where did traveller {i} go?" for i in range(n)],
        "answer": [f"City{i}" for i in range(n)],
        "type": ["bridge"] * n,
        "level": ["easy"] * n,
        "supporting_facts": [{"title": [f"Traveller {i}"], "sent_id": [0]} for i in range(n)],
        "context": [
            {"title": [f"Traveller {i}", f"Rain {i}"],
             "sentences": [[f"Traveller {i} went to City{i}.", " He stayed a week."], ["It rained."]]}
            for i in range(n)
        ],
    }  # fmt: skip


def save(tmp_path, name: str, columns: dict | None = None, splits: dict | None = None) -> str:
    path = tmp_path / name
    if splits is not None:
        datasets.DatasetDict({k: datasets.Dataset.from_dict(v) for k, v in splits.items()}).save_to_disk(path)
    else:
        datasets.Dataset.from_dict(columns).save_to_disk(path)
    return str(path)


def _oracle(model, tokenizer, samples, **kwargs):
    return [" ".join(s.answers) for s in samples]


def _ruler(monkeypatch, tokenizer, qa_data: str) -> dict:
    monkeypatch.setattr(eval_ruler, "greedy_outputs", _oracle)
    settings = EvalSettings(lengths=[LENGTH], ruler_tasks=["vt"], qa_data=qa_data, samples=2, progress=False)
    return run_ruler(None, tokenizer, settings)


def test_squad_and_hotpotqa_folders_give_qa_1_and_qa_2(tokenizer, tmp_path, monkeypatch):
    squad = save(tmp_path, "squad", squad_columns())
    hotpot = save(tmp_path, "hotpot", hotpot_columns())
    records = read_qa_records(squad)
    assert len(records) == 6 and records[0]["answers"] == {"text": ["Keeper0"], "answer_start": [16]}

    res = _ruler(monkeypatch, tokenizer, squad)
    assert set(res["tasks"]) == {"vt", "qa_1"} and res["tasks"]["qa_1"] == {LENGTH: 100.0}
    rows = [r for r in res["samples"] if r["task"] == "qa_1"]
    assert len(rows) == 2 and all(r["answers"][0].startswith("Keeper") for r in rows)
    assert "Keeper5" not in {r["answers"][0] for r in rows}, "the unanswerable row is skipped"

    res = _ruler(monkeypatch, tokenizer, hotpot)
    assert set(res["tasks"]) == {"vt", "qa_2"} and res["tasks"]["qa_2"] == {LENGTH: 100.0}
    (sample, *_) = eval_ruler.qa_samples(tokenizer, read_qa_records(hotpot), [LENGTH], n=1)
    prompt = tokenizer.decode(sample.input_ids)
    # each paragraph: its title, then its sentences joined as HotpotQA stores them (RULER's read_hotpotqa)
    assert "Traveller 0\nTraveller 0 went to City0. He stayed a week." in prompt
    assert "Rain 0\nIt rained." in prompt


def test_a_dataset_dict_reads_validation_then_test_then_train_or_the_named_split(tmp_path):
    three = save(
        tmp_path,
        "three",
        splits={
            "train": squad_columns(tag="T"),
            "validation": squad_columns(tag="V"),
            "test": squad_columns(tag="X"),
        },
    )
    first = lambda source: read_qa_records(source)[0]["answers"]["text"][0]  # noqa: E731
    assert first(three) == "KeeperV0"  # validation first (RULER builds qa_1/qa_2 from the dev sets)
    assert first(f"{three}:train") == "KeeperT0"
    assert first(f"{three}:test") == "KeeperX0"
    no_dev = save(
        tmp_path, "no_dev", splits={"train": squad_columns(tag="T"), "test": squad_columns(tag="X")}
    )
    assert first(no_dev) == "KeeperX0"  # then test
    assert first(save(tmp_path, "train_only", splits={"train": squad_columns(tag="T")})) == "KeeperT0"
    assert first(save(tmp_path, "one", splits={"dev": squad_columns(tag="D")})) == "KeeperD0"  # the only one

    with pytest.raises(DataError, match=r"no split 'dev'; expected one of \['train', 'validation', 'test'\]"):
        read_qa_records(f"{three}:dev")
    odd = save(tmp_path, "odd", splits={"dev": squad_columns(), "extra": squad_columns()})
    with pytest.raises(DataError, match=r"splits \['dev', 'extra'\], none of .*; name one, e.g. .*odd:dev"):
        read_qa_records(odd)
    with pytest.raises(DataError, match="a single dataset, no splits"):
        read_qa_records(save(tmp_path, "flat", squad_columns()) + ":validation")


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        ({"question": ["q"], "text": ["t"]}, r"columns \['question', 'text'\]; expected SQuAD columns"),
        ({"question": ["q"], "context": ["c"]}, r"columns \['question', 'context'\]; expected SQuAD"),
        (
            {"question": ["q"], "context": [3], "answer": ["a"]},
            r"record 0: 'context' is int; expected a string",
        ),
        ({"question": ["q"], "context": ["c"], "answers": [{"foo": ["a"]}]}, "no answerable record"),
    ],
)
def test_a_misshapen_dataset_is_one_line_naming_qa_data_the_value_and_the_layouts(
    tmp_path, columns, expected
):
    path = save(tmp_path, "bad", columns)
    with pytest.raises(DataError, match=expected) as err:
        read_qa_records(path)
    assert str(err.value).startswith(f"qa_data {path!r}") and "\n" not in str(err.value)


def test_missing_paths_and_uncached_ids_are_one_line_errors(tmp_path, monkeypatch):
    for value in (str(tmp_path / "nope.jsonl"), str(tmp_path / "no" / "folder"), "./qa"):
        with pytest.raises(
            DataError, match=f"qa_data {value!r}: no such file or folder; expected a QA .jsonl"
        ):
            read_qa_records(value)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="a folder but not a datasets save_to_disk folder"):
        read_qa_records(str(plain))
    (tmp_path / "bad.jsonl").write_text('{"question": "q"}\n{oops\n')
    with pytest.raises(DataError, match=r"bad.jsonl' line 2: invalid JSON"):
        read_qa_records(str(tmp_path / "bad.jsonl"))
    # a hub id under HF_DATASETS_OFFLINE=1 (tests/conftest.py sets it) that is not cached: no download
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(DataError) as err:
        read_qa_records("nobody-here/no-such-qa", "--qa-data")
    message = str(err.value)
    assert message.startswith("--qa-data 'nobody-here/no-such-qa': ") and "\n" not in message
    assert "not in the local datasets cache (offline mode)" in message


def test_hub_ids_take_name_split_and_name_config_split(tmp_path, monkeypatch):
    asked = []

    def fake_load_dataset(name, config=None, **kwargs):
        asked.append((name, config, kwargs))
        cols = hotpot_columns() if "hotpot" in name else squad_columns(tag=name[-1])
        return datasets.DatasetDict({"train": datasets.Dataset.from_dict(cols),
                                     "validation": datasets.Dataset.from_dict(cols)})  # fmt: skip

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert len(read_qa_records("rajpurkar/squad")) == 6
    read_qa_records("rajpurkar/squad:train")
    assert len(read_qa_records("hotpotqa/hotpot_qa:distractor:validation")) == 6
    read_qa_records("hotpotqa/hotpot_qa:distractor:")  # empty split: the default order
    assert asked == [("rajpurkar/squad", None, {})] * 2 + [("hotpotqa/hotpot_qa", "distractor", {})] * 2
    with pytest.raises(DataError, match=r"not a dataset id; expected a QA \.jsonl file"):
        read_qa_records("a:b:c:d")

    def missing_config(name, config=None, **kwargs):
        raise ValueError(
            "Config name is missing.\nPlease pick one among the available configs: ['distractor']"
        )

    monkeypatch.setattr(datasets, "load_dataset", missing_config)
    with pytest.raises(
        DataError, match=r"cannot load dataset 'hotpotqa/hotpot_qa' \(Config name is missing.\)"
    ):
        read_qa_records("hotpotqa/hotpot_qa")


def test_jsonl_files_still_work_and_inputs_are_checked_at_the_shortest_length(tokenizer, tmp_path):
    path = tmp_path / "qa.jsonl"
    rows = [{"question": f"Who is {i}?", "answers": [f"N{i}"], "context": f"{i} is N{i}."} for i in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_qa_records(str(path)) == rows
    settings = EvalSettings(lengths=[LENGTH, 4000], ruler_tasks=["vt"], qa_data=str(path), progress=False)
    check_task_inputs(tokenizer, ["ruler"], settings)
    short = EvalSettings(lengths=[60, LENGTH], ruler_tasks=["vt"], qa_data=str(path), progress=False)
    with pytest.raises(DataError, match=r"^--lengths 60: vt: length=60 is too short; expected ≥ \d+ tokens$"):
        check_task_inputs(tokenizer, ["ruler"], short, names={"lengths": "--lengths"})


def _stage(qa_data: str) -> eval_stage.Settings:
    return eval_stage.Settings(kind="eval", name="ev", tasks=["ruler"], lengths=[LENGTH], qa_data=qa_data)


def test_recipe_preflight_passes_a_dataset_folder_and_refuses_a_misshapen_one(tmp_path):
    squad = save(tmp_path, "squad", squad_columns())
    hotpot = save(tmp_path, "hotpot", splits={"validation": hotpot_columns()})
    jsonl = tmp_path / "qa.jsonl"
    jsonl.write_text(json.dumps({"question": "q", "answers": ["a"], "context": "a c"}) + "\n")
    for good in (squad, hotpot, f"{hotpot}:validation", str(jsonl)):
        assert eval_stage.preflight(_stage(good), ctx=None) == [], good
    bad = save(tmp_path, "bad", {"question": ["q"], "text": ["t"]})
    (line,) = eval_stage.preflight(_stage(bad), ctx=None)
    assert line.startswith(f"stages.ev.qa_data {bad!r}: columns ['question', 'text']; expected SQuAD columns")
    (line,) = eval_stage.preflight(_stage(str(tmp_path / "gone")), ctx=None)
    assert line.startswith(f"stages.ev.qa_data {str(tmp_path / 'gone')!r}: no such file or folder")


def test_a_recipe_with_a_misshapen_qa_dataset_is_refused_before_any_stage(tmp_path, capsys):
    """Through ``longctx run``: one line naming the stage's ``qa_data``, exit 2, nothing trained."""
    import yaml

    from longctx.data.corpus import load_demo_corpus
    from longctx.train.run import main
    from tests.train.conftest import write_recipe

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, text in enumerate(load_demo_corpus("kjv")[:2]):
        (corpus / f"book{i}.txt").write_text(text[:5000])
    bad = save(tmp_path, "bad", {"question": ["q"], "context": ["c"]})
    capsys.readouterr()  # save_to_disk's progress bar
    base = yaml.safe_load(write_recipe(tmp_path / "r.yaml", corpus, tmp_path / "out").read_text())["stages"]
    ev = {"name": "ev", "kind": "eval", "tasks": ["ruler"], "ruler_tasks": ["vt"], "lengths": [LENGTH],
          "qa_data": bad}  # fmt: skip
    path = write_recipe(tmp_path / "r.yaml", corpus, tmp_path / "out", stages=[base[0], ev])
    assert main([str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith(
        f"{path}: stages.ev.qa_data {bad!r}: columns ['question', 'context']; expected SQuAD"
    )
    assert not (tmp_path / "out" / "base").exists(), "refused before the first stage ran"
