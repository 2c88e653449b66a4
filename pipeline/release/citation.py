"""How to cite a release: a Citation File Format file (`data_cards/CITATION.cff`), rendered as BibTeX.

The card and manifest.json carry the BibTeX. It cites the file's `preferred-citation` where there
is one, else the file itself, as `@misc{<key>, author, title, version, year, doi, url, note}`
with only the fields present: author from `authors` (`family-names, given-names` or `name`),
year from `year` or `date-released`, url from `url` or `repository-code`, note from `notes`. The
key joins the first author's family name, the year and the title's first word, lower case
(as Google Scholar keys read), leaving out what is absent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from pipeline.release.folder import ReleaseError

ENTRY_TYPE = "misc"


def read_cff(path: str | Path) -> dict[str, Any]:
    """The fields of a CITATION.cff file; ReleaseError naming the file and the fix when it is not one."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ReleaseError(f"citation file {path} cannot be read ({err}): write it in Citation File Format "
                           "(https://citation-file-format.github.io)") from err
    if not isinstance(data, dict):
        raise ReleaseError(f"citation file {path} holds {type(data).__name__}, not Citation File Format fields: "
                           "write `title:` and the other fields as a YAML mapping")
    return data


def bibtex(cff: Mapping[str, Any], where: str = "CITATION.cff") -> str:
    """The BibTeX entry of a CITATION.cff's fields (see the module docstring for the mapping)."""
    reference = cff.get("preferred-citation") or cff
    title = reference.get("title")
    if not isinstance(title, str) or not title.strip():
        raise ReleaseError(f"{where} has no title ({title!r}): add `title: <the benchmark's name>`"
                           + (" to its preferred-citation" if reference is not cff else ""))
    authors = [_person(p, where) for p in reference.get("authors") or []]
    year = str(reference.get("year") or str(reference.get("date-released") or "")[:4])
    fields = [("author", " and ".join(authors)), ("title", title.strip()), ("version", reference.get("version")),
              ("year", year), ("doi", reference.get("doi")), ("url", reference.get("url") or reference.get("repository-code")),
              ("note", reference.get("notes"))]
    present = [(name, str(value).strip()) for name, value in fields if value not in (None, "")]
    width = max(len(name) for name, _ in present)
    first_author = authors[0].split(",")[0] if authors else ""
    key = "".join(_first_word(part) for part in (first_author, year, title))
    body = ",\n".join(f"  {name:<{width}} = {{{value}}}" for name, value in present)
    return f"@{ENTRY_TYPE}{{{key},\n{body}\n}}"


def _person(person: Any, where: str) -> str:
    if isinstance(person, Mapping):
        family, given = person.get("family-names"), person.get("given-names")
        if family:
            return f"{family}, {given}" if given else str(family)
        if person.get("name"):
            return str(person["name"])
    raise ReleaseError(f"{where}: author {person!r} has neither `family-names` nor `name`: give one of them")


def _first_word(text: str) -> str:
    words = re.findall(r"[0-9a-z]+", text.lower())
    return words[0] if words else ""
