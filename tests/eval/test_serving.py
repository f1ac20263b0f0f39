"""Serving parity of a longrope model across L: the KV cache under transformers' per-call switch,
one forced set (as engines serve), re-prefill at the switch, and the single-set export."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from longctx.eval.perplexity import perplexity_at_lengths
from longctx.eval.serving import CHOICE_KEYS, CHOICES, RESULT_KEYS, cached_greedy, serving_parity
from longctx.eval.tasks import EvalSettings
from longctx.rope import SPEC_FILE, RopeExportError, RopeSpec, apply_rope, factor_set, save_extended
from longctx.rope.export import FACTOR_SET_FILE
from tests.tiny import tiny_config, tiny_model

L = 32
HEAD_DIM = 16  # tiny_config: 64 hidden / 4 heads
NEW_TOKENS = 16  # prompts of L - 8 tokens decoded to L + 8
EXACT = 1e-5  # float32 noise of two forwards of the same math (measured ~1e-7)
SWITCH = 1e-3  # the tiny model's gap across the switch (measured ~8e-3; its logits are ~0.5)
TEXT = "In the beginning God created the heaven and the earth. And the earth was without form. "


def _spec() -> RopeSpec:
    rng = random.Random(0)
    return RopeSpec(
        "longrope",
        10_000.0,
        HEAD_DIM,
        L,
        4 * L,
        long_factor=[rng.uniform(2.0, 8.0) for _ in range(HEAD_DIM // 2)],
    )


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    docs = tmp_path_factory.mktemp("serving") / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": f"{i} {TEXT * 3}"}) + "\n" for i in range(3)))
    return EvalSettings(
        lengths=[16, L, 4 * L],
        samples=2,
        ppl_data=str(docs),
        ppl_docs=2,
        max_new_tokens=NEW_TOKENS,
        progress=False,
    )


@pytest.fixture(scope="module")
def installed():
    """The tiny Llama with the switching longrope spec installed by rope.apply_rope."""
    return apply_rope(tiny_model(tiny_config("llama", max_position_embeddings=L)), _spec())


def _stock(path):
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def exports(installed, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports")
    return {
        "switching": save_extended(installed, _spec(), out / "switching"),
        "single": save_extended(installed, _spec(), out / "single", single_factor_set=True),
    }


@pytest.fixture(scope="module")
def stock_switching(exports):
    return _stock(exports["switching"])


@pytest.fixture(scope="module")
def stock_single(exports):
    return _stock(exports["single"])


@pytest.fixture(scope="module")
def results(installed, stock_switching, stock_single, tokenizer, settings):
    return {
        "installed": serving_parity(installed, tokenizer, settings),
        "stock": serving_parity(stock_switching, tokenizer, settings),
        "single": serving_parity(stock_single, tokenizer, settings),
    }


def test_result_has_the_documented_keys_and_is_json(results):
    for result in results.values():
        assert tuple(result) == RESULT_KEYS
        assert tuple(result["choices"]) == CHOICES
        for choice in CHOICES:
            assert set(CHOICE_KEYS) <= set(result["choices"][choice])
        assert "short_ppl" in result["choices"]["forced_long"]
        assert result["choices"]["reprefill"]["extra_prefills"] == result["prompts"] == 2
        json.loads(json.dumps(result))
    r = results["stock"]
    assert (r["original_length"], r["prompt_length"], r["new_tokens"]) == (L, L - 8, NEW_TOKENS)
    assert r["final_length"] == L + 8 and r["rope_type"] == "longrope"


def test_stock_switching_export_gaps_only_after_L(results):
    r = results["stock"]
    assert r["rotary"] == "stock"
    switching = r["choices"]["switching"]
    by_length = switching["gap_by_length"]
    assert switching["gap_at_or_below_L"] < EXACT
    assert all(by_length[n] < EXACT for n in range(L - 8, L + 1))
    # the first prefix longer than L is the first step whose cache holds short-set keys
    assert by_length[L + 1] > SWITCH / 10
    assert switching["gap_above_L"] > SWITCH
    assert switching["self_gap"] == switching["max_logit_gap"] == switching["gap_above_L"]


def test_reprefill_at_the_switch_removes_the_gap(results):
    for name in ("stock", "installed"):
        reprefill = results[name]["choices"]["reprefill"]
        assert reprefill["available"]
        assert reprefill["max_logit_gap"] < EXACT
        assert reprefill["gap_above_L"] < EXACT
        assert reprefill["token_agreement_pct"] == 100.0
        assert reprefill["first_divergence"] == [None, None]


def test_stock_model_cannot_force_a_set(results):
    forced = results["stock"]["choices"]["forced_long"]
    assert forced["available"] is False and "apply_rope" in forced["note"]
    assert forced["max_logit_gap"] is None and forced["short_ppl"] is None


def test_installed_rotary_measures_the_forced_long_set(results):
    r = results["installed"]
    assert r["rotary"] == "longctx"
    # same model, same switch: the installed rotary reproduces the stock reload's figures
    for key in ("gap_at_or_below_L", "gap_above_L", "token_agreement_pct"):
        assert r["choices"]["switching"][key] == pytest.approx(
            results["stock"]["choices"]["switching"][key], abs=EXACT
        )
    forced = r["choices"]["forced_long"]
    assert forced["self_gap"] < EXACT  # one set: the cache is consistent
    assert forced["gap_above_L"] < EXACT  # past L the reference uses the long set too
    assert forced["gap_at_or_below_L"] > SWITCH  # short prefixes pay the long factors
    ppl = forced["short_ppl"]
    assert sorted(ppl) == [16, L]  # lengths ≤ L of settings.lengths
    for row in ppl.values():
        assert math.isfinite(row["switching"]) and math.isfinite(row["forced_long"])
        assert row["forced_long"] != row["switching"] and row["docs"] == 2
        assert row["increase_pct"] == pytest.approx(100 * (row["forced_long"] / row["switching"] - 1))


def test_cached_decoding_is_what_stock_generate_does(stock_switching):
    prompt = torch.randint(3, 128, (1, L - 8), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = stock_switching.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
            output_logits=True,
            return_dict_in_generate=True,
        )
    tokens, logits = cached_greedy(stock_switching, prompt[0].tolist(), NEW_TOKENS)
    assert tokens == out.sequences[0, L - 8 :].tolist()
    assert max(float((a - b[0]).abs().max()) for a, b in zip(logits, out.logits)) < EXACT


def test_single_set_export_config_spec_and_note(exports):
    spec = _spec()
    config = json.loads((exports["single"] / "config.json").read_text())
    for key in ("rope_parameters", "rope_scaling"):
        assert config[key]["rope_type"] == "longrope"
        assert config[key]["short_factor"] == config[key]["long_factor"] == list(spec.long_factor)
    saved = RopeSpec.from_json(exports["single"] / SPEC_FILE)
    assert saved.short_factor == saved.long_factor == spec.long_factor
    note = json.loads((exports["single"] / FACTOR_SET_FILE).read_text())
    assert note["single_factor_set"] is True and note["factor_set"] == "long"
    assert note["replaced_short_factor"] == [1.0] * (HEAD_DIM // 2)
    # the default export is unchanged: the switching config, no note
    default = json.loads((exports["switching"] / "config.json").read_text())
    assert default["rope_parameters"]["short_factor"] == [1.0] * (HEAD_DIM // 2)
    assert not (exports["switching"] / FACTOR_SET_FILE).exists()


def test_single_set_export_is_consistent_across_L(results):
    r = results["single"]
    switching = r["choices"]["switching"]
    assert switching["gap_at_or_below_L"] < EXACT and switching["gap_above_L"] < EXACT
    assert switching["token_agreement_pct"] == 100.0


def test_single_set_export_serves_the_forced_long_set_and_its_short_cost(
    installed, stock_switching, stock_single, tokenizer, results
):
    ids = torch.randint(3, 128, (1, L), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode(), factor_set(installed, "long"):
        forced = installed(input_ids=ids).logits
    with torch.inference_mode():
        assert float((stock_single(input_ids=ids).logits - forced).abs().max()) < EXACT
    # short-context cost: perplexity at L of the single-set export vs the normal export
    docs = [tokenizer.encode(f"{i} {TEXT * 3}", add_special_tokens=False) for i in range(2)]
    ppl = {
        name: perplexity_at_lengths(model, docs, [L], bos_id=tokenizer.bos_token_id, progress=False)[L]["ppl"]
        for name, model in (("switching", stock_switching), ("single", stock_single))
    }
    assert all(math.isfinite(v) for v in ppl.values()) and ppl["single"] != ppl["switching"]
    short_ppl = results["installed"]["choices"]["forced_long"]["short_ppl"][L]
    assert ppl["single"] == pytest.approx(short_ppl["forced_long"], rel=1e-5)
    assert ppl["switching"] == pytest.approx(short_ppl["switching"], rel=1e-5)


def test_single_set_export_rejects_methods_without_factor_sets(installed, tmp_path):
    yarn = RopeSpec("yarn", 10_000.0, HEAD_DIM, L, 4 * L)
    with pytest.raises(RopeExportError, match="single_factor_set"):
        save_extended(installed, yarn, tmp_path / "yarn", single_factor_set=True)
    assert not (tmp_path / "yarn").exists()


def test_too_few_new_tokens_to_pass_L_is_an_error(installed, tokenizer, settings):
    short = EvalSettings(**{**vars(settings), "max_new_tokens": 9})  # last prefix is exactly L
    with pytest.raises(ValueError, match="longer than L"):
        serving_parity(installed, tokenizer, short)


def test_every_engine_rule_is_measured_and_reported(results):
    """Six engines by their factor-set rule: TGI's stitched table keeps a consistent cache that
    equals the reference up to L and mixes rotations past it; SGLang's batch rule flips a short
    request the moment a long one shares its batch (a gap even below L, and an inconsistent cache)."""
    from longctx.eval.report import _serving_table
    from longctx.eval.serving import ENGINE_RULES

    r = results["installed"]
    assert r["engines"] == ENGINE_RULES and len(ENGINE_RULES) == 6
    assert set(ENGINE_RULES.values()) <= set(CHOICES)
    stitched, neighbour = r["choices"]["stitched"], r["choices"]["long_neighbour"]
    assert stitched["available"] and stitched["self_gap"] < EXACT
    assert stitched["gap_at_or_below_L"] < EXACT and stitched["gap_above_L"] > EXACT
    assert neighbour["gap_at_or_below_L"] > SWITCH / 10 and neighbour["self_gap"] > SWITCH / 10
    assert results["stock"]["choices"]["stitched"]["available"] is False  # stock rotary: cannot force
    table = _serving_table({"runs": [{"name": "m", "tasks": {"serving": r}}]})
    assert sum(row.startswith("| m |") for row in table) == 6
    assert any("| TGI | per token position" in row for row in table)
