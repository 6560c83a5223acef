"""The cluster's natural-text prompts, exercised offline with a small BPE tokenizer trained here."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from bcr import prompts

CHAT = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    words = [prompts._SUBJECTS, prompts._VERBS, prompts._OBJECTS, prompts._TAILS, prompts._VAULTS]
    corpus = [" ".join(w) for w in words] + ["The pass code of the vault is 0123456789. What is it? Answer."]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>")
    fast.chat_template = CHAT
    return fast


def test_text_prompts_fit_budget_and_hold_the_needle(tokenizer):
    df = prompts.text_prompt_set(tokenizer, 1024, 3, seed=1, max_new_tokens=16)
    again = prompts.text_prompt_set(tokenizer, 1024, 3, seed=1, max_new_tokens=16)
    assert df.equals(again)
    for row in df.to_dict("records"):
        n = len(row["input_ids"])
        assert 1024 - 16 - 40 <= n <= 1024 - 16  # sized to leave room for generation
        assert row["needle_start"] >= 0
        text = tokenizer.decode(row["input_ids"])
        assert f"vault is {row['answer_text']}." in text
        assert text.endswith("<|im_start|>assistant\n")
    starts = df["needle_start"].tolist()
    assert starts == sorted(starts)  # depths 1/6, 1/2, 5/6


def test_question_start_splits_context_and_question(tokenizer):
    """Before question_start: the document (needle included); from it: the question and the reply prompt."""
    for row in prompts.text_prompt_set(tokenizer, 768, 2, seed=3, max_new_tokens=8).to_dict("records"):
        ids, q = row["input_ids"], row["question_start"]
        assert row["needle_end"] <= q < len(ids)
        question = tokenizer.decode(ids[q:])
        assert question.lstrip("\n").startswith("What is the pass code of the")
        assert "pass code of the" in tokenizer.decode(ids[:q]) and "What is" not in tokenizer.decode(ids[:q])


def test_text_answer_judged_on_decoded_reply(tokenizer):
    row = prompts.text_prompt_set(tokenizer, 512, 1, seed=2, max_new_tokens=8).iloc[0]
    good = tokenizer.encode(f"The code is {row['answer_text']}.", add_special_tokens=False)
    bad = tokenizer.encode("The code is 000000.", add_special_tokens=False)
    assert prompts.answer_correct(good, row, tokenizer)
    assert not prompts.answer_correct(bad, row, tokenizer)
    with pytest.raises(ValueError, match="tokenizer"):
        prompts.answer_correct(good, row)


def test_answer_span_of_a_text_reply(tokenizer):
    row = prompts.text_prompt_set(tokenizer, 512, 1, seed=2, max_new_tokens=8).iloc[0]
    reply = tokenizer.encode(f"The code is {row['answer_text']}. Then more text.", add_special_tokens=False)
    k = prompts.answer_span(reply, row, tokenizer)
    assert row["answer_text"] in tokenizer.decode(reply[:k])
    assert row["answer_text"] not in tokenizer.decode(reply[: k - 1])


def test_the_needle_family_is_the_default_and_unchanged(tokenizer):
    a = prompts.text_prompt_set(tokenizer, 768, 2, seed=3, max_new_tokens=8)
    b = prompts.text_prompt_set(tokenizer, 768, 2, seed=3, max_new_tokens=8, workload="needle")
    assert a.equals(b) and (a["workload"] == "needle").all()
    assert [r["value_positions"] for r in a.to_dict("records")] == [
        [r["needle_start"]] for r in a.to_dict("records")
    ]


def test_scattered_text_spreads_the_digits_over_the_document(tokenizer):
    df = prompts.text_prompt_set(tokenizer, 1024, 3, seed=4, max_new_tokens=8, workload="scattered")
    for row in df.to_dict("records"):
        text = tokenizer.decode(row["input_ids"])
        code = row["answer_text"]
        for i, digit in enumerate(code):
            assert f"{prompts._ORDINALS[i]} digit of the" in text and f"pass code is {digit}." in text
        assert f"vault is {code}" not in text  # the whole code appears nowhere
        pos = row["value_positions"]
        assert len(pos) == 6 and all(0 <= p < row["question_start"] for p in pos)
        assert len({p // 64 for p in pos}) >= 3  # several far-apart pages (64-token pages)


def test_distractor_text_has_several_vaults_and_asks_one(tokenizer):
    df = prompts.text_prompt_set(tokenizer, 1024, 3, seed=5, max_new_tokens=8, workload="distractor")
    for row in df.to_dict("records"):
        ids, q = row["input_ids"], row["question_start"]
        doc, question = tokenizer.decode(ids[:q]), tokenizer.decode(ids[q:])
        assert doc.count("The pass code of the") == prompts.DISTRACTOR_VAULTS
        vault = question.split("pass code of the ")[1].split(" vault")[0]
        assert f"The pass code of the {vault} vault is {row['answer_text']}." in doc
        assert row["value_positions"] == [row["needle_start"]] and row["needle_start"] >= 0
