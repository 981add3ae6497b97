"""Cleaning steps: normalisation, language tags, quality rules (CJK-aware) and PII masking."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge.config import LanguageConfig, NormalizeConfig, PiiConfig, QualityConfig
from lmforge.data.clean import LanguageFilter, Normalize, PiiMasker, QualityFilter, identify_language
from lmforge.data.steps import Doc

ENGLISH = ("The committee met on Tuesday to discuss the budget for the coming year. Several members raised "
           "concerns about the cost of the new library, and the chair agreed to ask for a second estimate.")
CHINESE = "此开卷第一回也。作者自云：因曾历过一番梦幻之后，故将真事隐去，而借通灵之说，撰此石头记一书也。"


def normalize(text: str, **cfg: object) -> str:
    step = Normalize(NormalizeConfig(**cfg))  # type: ignore[arg-type]
    return next(step([Doc(text, "t:1")])).text


def test_normalize_unicode_control_whitespace() -> None:
    assert normalize("ｆｕｌｌ　ｗｉｄｔｈ ﬁ", unicode_form="NFKC") == "full width fi"
    assert normalize("e\u0301", unicode_form="NFC") == "\u00e9"
    assert normalize("zero\u200bwidth\u00ad and\x07 bell\tkept") == "zerowidth and bell\tkept"
    assert normalize("a\r\nb\rc\n") == "a\nb\nc\n"
    assert normalize("\n\na\n\n\n\n\nb  \n\n\n") == "a\n\n\nb\n"  # runs of blank lines shrink, final \n kept
    assert normalize("line  \nnext", strip_trailing_spaces=True) == "line\nnext"
    assert normalize("   \n\t\n") == ""


def test_normalize_strips_html_when_asked() -> None:
    html = "<html><head><title>T</title><style>p{}</style></head><body><p>One &amp; two</p><script>x()</script><p>Three</p></body></html>"
    assert normalize(html) == html  # off by default
    assert normalize(html, strip_html=True) == "One & two\n\nThree"


def test_normalize_changes_instruction_fields_with_text() -> None:
    doc = Doc("a\u200bb", "t:1", {"instruction": "a\u200bb", "label": 1}, ("instruction",))
    out = next(Normalize(NormalizeConfig())([doc]))
    assert out.text == "ab" and out.fields == {"instruction": "ab", "label": 1}


@pytest.mark.parametrize(("text", "lang"), [
    (ENGLISH, "en"), (CHINESE, "zh"), ("it is a charming and often affecting journey .", "en"),
    ("Der Hund ist nicht hier, und die Katze ist auch nicht da.", "de"),
    ("Le chat est dans la maison et il ne veut pas sortir.", "fr"),
    ("これは日本語の文章です。ひらがなとカタカナがあります。", "ja"), ("Привет, как дела?", "other"), ("12345 678", "other"),
])
def test_language_identification(text: str, lang: str) -> None:
    assert identify_language(text) == lang


def test_language_keep_list_tags_and_filters() -> None:
    step = LanguageFilter(LanguageConfig(keep=["zh"]))
    kept = list(step([Doc(ENGLISH, "e:1"), Doc(CHINESE, "z:1")]))
    assert [d.source for d in kept] == ["z:1"] and kept[0].fields["lang"] == "zh"
    assert step.stats.removed_by == {"not_kept": 1}
    assert step.stats.examples[0]["source"] == "e:1" and step.stats.examples[0]["detail"] == "en"


def quality(text: str, **cfg: object) -> str | None:
    """The rule that removes `text`, or None when it is kept."""
    step = QualityFilter(QualityConfig(**cfg))  # type: ignore[arg-type]
    kept = list(step([Doc(text, "t:1")]))
    return None if kept else next(iter(step.stats.removed_by))


def test_quality_keeps_normal_english_chinese_and_short_sentences() -> None:
    assert quality(ENGLISH) is None
    assert quality(CHINESE) is None  # CJK characters count as words; no mean-word-length rule for it
    assert quality(CHINESE * 200) is None
    assert quality("hide new secretions from the parental units") is None
    assert quality("This is a sentence, and it ends in an ellipsis...") is None  # one line: no line rules


def test_quality_rules_each_fire() -> None:
    assert quality("") == "min_chars"
    assert quality(ENGLISH, max_chars=50) == "max_chars"
    assert quality("one two three", min_words=5) == "min_words"
    assert quality(CHINESE, max_words=10) == "max_words"  # each Han character is a word
    assert quality("a b c d e f g h i j") == "min_mean_word_length"
    assert quality("incomprehensibilities supercalifragilistic antidisestablishment") == "max_mean_word_length"
    assert quality("#tag #more #hash words here " * 3) == "max_symbol_word_ratio"
    trailing_off = "we waited for a long time and then...\nthey came back to the house at last and...\n" * 2
    assert quality(trailing_off + "the end of it all came at night.") == "max_ellipsis_line_fraction"
    assert quality("- one item\n- two items\n- three items\n- four items") == "max_bullet_line_fraction"
    assert quality("12 34 56 78 90 word") == "min_alpha_word_fraction"
    assert quality("Lorem ipsum dolor sit amet, consectetur adipiscing elit.") == "lorem_ipsum"
    repeated = "the same line again\n" * 5 + "a different one\n"
    assert quality(repeated) is None  # duplicate-line rule is off by default (verse repeats)
    assert quality(repeated, max_duplicate_line_fraction=0.3) == "max_duplicate_line_fraction"
    assert quality("buy now " * 20, max_top_ngram_fraction=0.2) == "max_top_ngram_fraction"
    spam = ENGLISH + " " + " ".join(["click here to win a prize today"] * 4)
    assert quality(spam, max_duplicate_ngram_fraction=0.15) == "max_duplicate_ngram_fraction"
    assert quality(ENGLISH, max_duplicate_ngram_fraction=0.15, max_top_ngram_fraction=0.2) is None


def test_chinese_novels_survive_quality(shared_data: Path) -> None:
    for f in sorted((shared_data / "chinese-text").glob("*.txt")):
        text = f.read_text(encoding="utf-8")
        assert quality(text) is None, f
        chapter = text[5000:9000]
        assert quality(chapter) is None


def mask(text: str, **cfg: object) -> tuple[str, dict[str, int]]:
    step = PiiMasker(PiiConfig(**cfg))  # type: ignore[arg-type]
    out = next(step([Doc(text, "t:1")]))
    return out.text, dict(step.stats.counters)


def test_pii_masked_and_counted() -> None:
    text = ("Mail john.doe+x@example.co.uk or call +1 415-555-0132 / (212) 555-7890 / 13812345678; "
            "servers 192.168.0.1 and 2001:db8::8a2e:370:7334 are down.")
    out, counts = mask(text)
    assert out == ("Mail <EMAIL> or call <PHONE> / <PHONE> / <PHONE>; servers <IP> and <IP> are down.")
    assert counts == {"email": 1, "phone": 3, "ip": 2, "docs_masked": 1}


def test_pii_leaves_ordinary_numbers_and_times() -> None:
    text = "In 1999 we met at 10:30:00, paid 2,500 dollars, read chapter 3.14 and version 1.2.3 on page 42."
    out, counts = mask(text)
    assert out == text and counts == {}
    out, _ = mask("write to a@b.org", email=False)
    assert out == "write to a@b.org"
