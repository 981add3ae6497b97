"""Cleaning steps: Unicode and whitespace normalisation, language identification, Gopher/C4-style quality
filters and PII masking. Each is a small `Step` switched and tuned from `data.*` in the config.

Counting is CJK-aware throughout: a Han/kana/Hangul character counts as one word, because Chinese and
Japanese are written without spaces and would otherwise look like a few enormous "words".
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections import Counter
from html.parser import HTMLParser
from typing import ClassVar

from lmforge.config import LanguageConfig, NormalizeConfig, PiiConfig, QualityConfig
from lmforge.data.steps import Doc, Filter, Mapper, Step

# Han (incl. extension A and compatibility ideographs), kana, Hangul syllables.
CJK_CLASS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
_CJK = re.compile(f"[{CJK_CLASS}]")
# A word: one CJK character, or a run of other non-space characters.
_WORD = re.compile(f"[{CJK_CLASS}]|[^\\s{CJK_CLASS}]+")
_RUN = re.compile(f"[^\\s{CJK_CLASS}]+")  # the non-CJK words
# A non-CJK word without a single letter ("--", "1999", "..."): no letter, bounded by space, CJK or an end.
_NONALPHA_WORD = re.compile(f"(?<![^\\s{CJK_CLASS}])(?:[^\\w\\s]|[\\d_])+(?![^\\s{CJK_CLASS}])")
_PUNCT_WORD = re.compile(f"(?<![^\\s{CJK_CLASS}])[^\\w\\s]+(?![^\\s{CJK_CLASS}])")  # no letter or digit

# ---------------------------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------------------------

# C0/C1 controls except \t and \n, plus zero-width and direction-control characters, soft hyphen and BOM:
# invisible, they only make identical text look different to dedup and the tokenizer.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
_TRAILING_SPACE = re.compile(r"[ \t]+$", re.MULTILINE)


class _TextExtractor(HTMLParser):
    """Text of an HTML document: script/style dropped, block elements become line breaks."""

    _SKIP: ClassVar[set[str]] = {"script", "style", "noscript", "template", "head"}
    _BLOCK: ClassVar[set[str]] = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article",
                                  "header", "footer", "blockquote", "pre", "table", "ul", "ol", "hr", "title"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.saw_tag = False
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.saw_tag = True
        if tag in self._SKIP:
            self._skipping += 1
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def strip_html(text: str) -> str:
    if "<" not in text and "&" not in text:
        return text
    parser = _TextExtractor()
    parser.feed(text)
    parser.close()
    text = "".join(parser.parts)
    # Line breaks put in for the outermost block elements are markup, not text.
    return text.strip("\n") if parser.saw_tag else text


class Normalize(Mapper):
    """Unicode form, HTML, invisible characters, line endings and blank-line runs."""

    name = "normalize"

    def __init__(self, cfg: NormalizeConfig, max_examples: int = 3) -> None:
        super().__init__(max_examples)
        self.cfg = cfg

    def transform(self, text: str) -> str:
        cfg = self.cfg
        if cfg.strip_html:
            text = strip_html(text)
        if cfg.unicode_form != "none" and not text.isascii():  # ASCII is already in every form
            text = unicodedata.normalize(cfg.unicode_form, text)
        if cfg.normalize_whitespace and "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if cfg.remove_control:
            text = _CONTROL.sub("", text)
        if cfg.normalize_whitespace:
            text = self._whitespace(text)
        return text

    def _whitespace(self, text: str) -> str:
        if self.cfg.strip_trailing_spaces:
            text = _TRAILING_SPACE.sub("", text)
        # Runs of blank lines (max_blank_lines or more) shrink to max_blank_lines.
        keep = self.cfg.max_blank_lines
        text = re.sub(rf"\n(?:[ \t]*\n){{{keep + 1},}}", "\n" * (keep + 1), text)
        # Leading blank lines and trailing whitespace go; a final newline stays (files end with one, and
        # nanoGPT's split of tiny-shakespeare counts it).
        body = text.lstrip("\n").rstrip()
        if not body:
            return ""
        return body + "\n" if text.endswith("\n") else body


# ---------------------------------------------------------------------------------------------------------
# Language identification
# ---------------------------------------------------------------------------------------------------------

# Frequent function words: a Latin-script text is English if enough of its words are English ones. German,
# French and Spanish lists let a continental text win its own tag instead of being called English.
_FUNCTION_WORD_LISTS = {
    "en": ("the of and to a in is it that for was on with as be at by this are not but have from or "
           "an they you he she his her we i my me so if no all its what there been were which their "
           "would will can one has had do more about when up out who them your"),
    "de": ("der die und das ist nicht ein eine zu den mit von sich des auf für im dem ich es sie er "
           "auch wir ihr wie aber noch nur oder wenn"),
    "fr": ("le la les et est un une des du de que qui dans pour pas sur au il elle ne se en ce avec "
           "nous vous sont mais ou plus par"),
    "es": ("el la los las y es un una de que en por con para del se no su al lo como más pero sus "
           "le ya o este sí porque esta"),
}
_LANGS_OF_WORD: dict[str, tuple[str, ...]] = {}
for _lang, _words in _FUNCTION_WORD_LISTS.items():
    for _w in _words.split():
        _LANGS_OF_WORD[_w] = (*_LANGS_OF_WORD.get(_w, ()), _lang)
_LATIN_WORD = re.compile(r"[^\W\d_]+")
_SCRIPTS = {
    "han": re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]"),
    "kana": re.compile("[\u3040-\u30ff]"),
    "hangul": re.compile("[\uac00-\ud7af]"),
    "latin": re.compile("[A-Za-z\u00c0-\u024f]"),
}
_LETTER = re.compile(r"[^\W\d_]")


def identify_language(text: str, sample_chars: int = 10_000, min_share: float = 0.1) -> str:
    """'zh', 'ja', 'ko', 'en', 'de', 'fr', 'es' or 'other', from the script of the letters and, for Latin
    script, the share of a language's function words. No model: fast, and right for clear cases."""
    if len(text) > sample_chars:  # beginning, middle and end: a long document is judged on a sample
        third = sample_chars // 3
        mid = len(text) // 2
        text = text[:third] + " " + text[mid - third // 2: mid + third // 2] + " " + text[-third:]
    if text.isascii():  # the common case, made cheap: every letter is Latin, no script count needed
        words = _LATIN_WORD.findall(text.lower())
        return _by_function_words(words, min_share) if words else "other"
    letters = len(_LETTER.findall(text))
    if letters == 0:
        return "other"
    counts = {name: len(rx.findall(text)) for name, rx in _SCRIPTS.items()}
    cjk = counts["han"] + counts["kana"] + counts["hangul"]
    if cjk >= 0.3 * letters:
        if counts["kana"] >= 0.1 * cjk:
            return "ja"  # Japanese mixes kana into Han; Chinese has none
        if counts["hangul"] >= 0.5 * cjk:
            return "ko"
        return "zh"
    if counts["latin"] >= 0.5 * letters:
        return _by_function_words(_LATIN_WORD.findall(text.lower()), min_share)
    return "other"


def _by_function_words(words: list[str], min_share: float) -> str:
    hits: dict[str, int] = {}
    get = _LANGS_OF_WORD.get
    for langs in filter(None, map(get, words)):
        for lang in langs:
            hits[lang] = hits.get(lang, 0) + 1
    if not hits:
        return "other"
    best, count = max(hits.items(), key=lambda kv: (kv[1], kv[0] == "en"))  # ties go to English
    return best if count / len(words) >= min_share else "other"


class LanguageFilter(Filter):
    """Tags each document with `lang`; drops those outside `data.language.keep` when it is set."""

    name = "language"

    def __init__(self, cfg: LanguageConfig, max_examples: int = 3) -> None:
        super().__init__(max_examples)
        self.cfg = cfg
        self.keep = set(cfg.keep)

    def reject(self, doc: Doc) -> str | tuple[str, str] | None:
        lang = identify_language(doc.text, self.cfg.sample_chars, self.cfg.min_function_word_fraction)
        doc.fields["lang"] = lang
        self.stats.counters[f"lang_{lang}"] += 1
        if self.keep and lang not in self.keep:
            return "not_kept", lang
        return None


# ---------------------------------------------------------------------------------------------------------
# Quality
# ---------------------------------------------------------------------------------------------------------

_BULLETS = ("•", "●", "○", "▪", "■", "◦", "‣", "-", "*", "·", "–", "—")
_ELLIPSES = ("...", "…")
_LOREM = re.compile(r"lorem ipsum", re.IGNORECASE)


def count_words(text: str) -> int:
    """len(words_of(text)), without building the list."""
    return len(text) - len(_CJK.sub("", text)) + len(_RUN.findall(text))


def words_of(text: str) -> list[str]:
    """Whitespace-separated words, with each CJK character a word of its own."""
    return _WORD.findall(text)


def _ngram_char_fractions(words: list[str], n: int) -> tuple[float, float]:
    """Gopher's repetition measures over word n-grams, as fractions of the characters in words:
    (chars in the most frequent n-gram's occurrences, chars in n-grams that occur more than once)."""
    if len(words) < n:
        return 0.0, 0.0
    total = sum(len(w) for w in words) or 1
    grams = list(zip(*(words[i:] for i in range(n))))
    counts = Counter(grams)
    top, top_count = counts.most_common(1)[0]
    top_frac = top_count * sum(len(w) for w in top) / total if top_count > 1 else 0.0
    covered = [False] * len(words)
    for i, gram in enumerate(grams):
        if counts[gram] > 1:
            for j in range(i, i + n):
                covered[j] = True
    dup_frac = sum(len(w) for w, c in zip(words, covered) if c) / total
    return top_frac, dup_frac


class QualityFilter(Filter):
    """Gopher (Rae et al. 2021) and C4 (Raffel et al. 2020) heuristics; a threshold of None switches a rule off.

    The reason a document goes is the name of the first rule it breaks, e.g. `max_symbol_word_ratio`.
    """

    name = "quality"

    def __init__(self, cfg: QualityConfig, max_examples: int = 3) -> None:
        super().__init__(max_examples)
        self.cfg = cfg

    def reject(self, doc: Doc) -> str | tuple[str, str] | None:
        c = self.cfg
        text = doc.text
        n_chars = len(text)
        if c.min_chars is not None and n_chars < c.min_chars:
            return "min_chars", f"{n_chars} chars"
        if c.max_chars is not None and n_chars > c.max_chars:
            return "max_chars", f"{n_chars} chars"
        if c.drop_lorem_ipsum and _LOREM.search(text):
            return "lorem_ipsum"
        # Counted with regexes over the whole text rather than a Python loop per word: a novel is a
        # million words. Words are the CJK characters plus the runs of other non-space characters.
        n_cjk = len(text) - len(_CJK.sub("", text))
        runs = _RUN.findall(text)
        n_words = n_cjk + len(runs)
        if c.min_words is not None and n_words < c.min_words:
            return "min_words", f"{n_words} words"
        if c.max_words is not None and n_words > c.max_words:
            return "max_words", f"{n_words} words"
        if n_words == 0:
            return None
        # Mean word length is meaningless for CJK text (every "word" is one character): only rule on
        # text that is mostly not CJK, and only over its non-CJK words that have a letter or digit.
        if n_cjk < 0.5 * n_words and (c.min_mean_word_length is not None or c.max_mean_word_length is not None):
            # Words of punctuation only ("," or "--") do not count; subtracting them is faster than a
            # per-word test.
            punct = _PUNCT_WORD.findall(text)
            n_real = len(runs) - len(punct)
            if n_real:
                mean = (sum(map(len, runs)) - sum(map(len, punct))) / n_real
                if c.min_mean_word_length is not None and mean < c.min_mean_word_length:
                    return "min_mean_word_length", f"{mean:.2f}"
                if c.max_mean_word_length is not None and mean > c.max_mean_word_length:
                    return "max_mean_word_length", f"{mean:.2f}"
        if c.max_symbol_word_ratio is not None:
            symbols = text.count("#") + text.count("...") + text.count("…")
            if symbols / n_words > c.max_symbol_word_ratio:
                return "max_symbol_word_ratio", f"{symbols}/{n_words}"
        if c.min_alpha_word_fraction is not None:
            alpha = 1 - len(_NONALPHA_WORD.findall(text)) / n_words  # CJK characters are letters
            if alpha < c.min_alpha_word_fraction:
                return "min_alpha_word_fraction", f"{alpha:.2f}"
        verdict = self._line_rules(text)
        if verdict is not None:
            return verdict
        if c.max_top_ngram_fraction is None and c.max_duplicate_ngram_fraction is None:
            return None
        return self._repetition_rules(words_of(text))

    def _line_rules(self, text: str) -> tuple[str, str] | None:
        c = self.cfg
        lines = [ln.strip() for ln in text.split("\n")]
        lines = [ln for ln in lines if ln]
        # One-line documents (a sentence, a review) end in "..." or start with "-" far too often for a
        # line share to mean anything: the rules need a few lines to judge.
        if len(lines) < c.min_lines_for_line_rules:
            return None
        n = len(lines)
        if c.max_ellipsis_line_fraction is not None:
            frac = sum(ln.endswith(_ELLIPSES) for ln in lines) / n
            if frac > c.max_ellipsis_line_fraction:
                return "max_ellipsis_line_fraction", f"{frac:.2f}"
        if c.max_bullet_line_fraction is not None:
            frac = sum(ln.startswith(_BULLETS) for ln in lines) / n
            if frac > c.max_bullet_line_fraction:
                return "max_bullet_line_fraction", f"{frac:.2f}"
        if c.max_duplicate_line_fraction is not None:
            frac = 1 - len(set(lines)) / n
            if frac > c.max_duplicate_line_fraction:
                return "max_duplicate_line_fraction", f"{frac:.2f}"
        return None

    def _repetition_rules(self, words: list[str]) -> tuple[str, str] | None:
        c = self.cfg
        if c.max_top_ngram_fraction is not None:
            top, _ = _ngram_char_fractions(words, c.top_ngram_size)
            if top > c.max_top_ngram_fraction:
                return "max_top_ngram_fraction", f"{top:.2f}"
        if c.max_duplicate_ngram_fraction is not None:
            _, dup = _ngram_char_fractions(words, c.duplicate_ngram_size)
            if dup > c.max_duplicate_ngram_fraction:
                return "max_duplicate_ngram_fraction", f"{dup:.2f}"
        return None


# ---------------------------------------------------------------------------------------------------------
# PII
# ---------------------------------------------------------------------------------------------------------

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.])")
# Candidates only: anything of hex groups and colons with at least two colons; `ipaddress` decides.
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])")
_PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}[\s.-]?(?:\(\d{1,4}\)|\d{1,4})(?:[\s.-]?\d{2,4}){2,4}"  # international: +44 20 7946 0958
    r"|\(\d{3}\)\s?\d{3}[\s.-]\d{4}"  # (555) 123-4567
    r"|\d{3}[.-]\d{3}[.-]\d{4}"  # 555-123-4567
    r"|1[3-9]\d{9}"  # Chinese mobile 13812345678
    r"|0\d{2,3}-\d{7,8}"  # Chinese landline 010-12345678
    r")(?!\w)"
)
_DIGIT = re.compile(r"\d")


class PiiMasker(Step):
    """Replaces e-mail addresses, IP addresses and phone numbers with <EMAIL>, <IP>, <PHONE>."""

    name = "pii"

    def __init__(self, cfg: PiiConfig, max_examples: int = 3) -> None:
        super().__init__(max_examples)
        self.cfg = cfg
        self._found: Counter[str] = Counter()  # matches in the current document

    def _ipv6(self, match: re.Match[str]) -> str:
        try:
            ipaddress.IPv6Address(match.group(0))
        except ValueError:
            return match.group(0)  # a time like 10:30:00, or "::" in prose
        self._count("ip", 1)
        return "<IP>"

    def _count(self, kind: str, n: int) -> None:
        if n:
            self._found[kind] += n

    def mask(self, text: str) -> str:
        # Cheap guards first: most text has no '@' and many documents no digits at all.
        if self.cfg.email and "@" in text:
            text, n = _EMAIL.subn("<EMAIL>", text)
            self._count("email", n)
        has_digit = _DIGIT.search(text) is not None
        if self.cfg.ip and has_digit:
            text, n = _IPV4.subn("<IP>", text)
            self._count("ip", n)
        if self.cfg.ip and text.count(":") >= 2:
            text = _IPV6.sub(self._ipv6, text)
        if self.cfg.phone and has_digit:
            text, n = _PHONE.subn("<PHONE>", text)
            self._count("phone", n)
        return text

    def process(self, doc: Doc) -> Doc | None:
        self._found.clear()
        doc.map_text(self.mask)
        if self._found:
            self.stats.counters.update(self._found)
            self.stats.counters["docs_masked"] += 1
            self.example(doc, "masked", ", ".join(f"{k}={v}" for k, v in self._found.items()))
        return doc
