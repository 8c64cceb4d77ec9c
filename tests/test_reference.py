"""docs/job-files.md is generated from the job-file Structs and describes every key."""

from __future__ import annotations

from pathlib import Path

import msgspec
from msgspec import inspect as mi

from synap_bulk.reference import render_reference
from synap_bulk.spec import FIELD_DOCS, field_paths, job_sections

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "job-files.md"


def test_reference_file_is_what_the_generator_writes() -> None:
    """docs/job-files.md is exactly what `python -m synap_bulk.reference` writes."""
    assert REFERENCE.read_text(encoding="utf-8") == render_reference(), (
        "docs/job-files.md is stale: python -m synap_bulk.reference > docs/job-files.md"
    )


def test_every_field_has_a_description_and_every_description_a_field() -> None:
    """FIELD_DOCS describes every key of every section, and no key that is gone."""
    paths = field_paths()
    missing = [p for p in paths if not FIELD_DOCS.get(p, "").strip()]
    assert missing == [], f"keys without a description in spec.FIELD_DOCS: {missing}"
    stale = sorted(set(FIELD_DOCS) - set(paths))
    assert stale == [], f"descriptions of keys that do not exist: {stale}"


def test_every_section_struct_field_is_in_the_reference() -> None:
    """Each field of each section's Struct appears as a row of the reference, with its default."""
    text = render_reference()
    for _prefix, struct in job_sections():
        info = mi.type_info(struct)
        assert isinstance(info, mi.StructType)
        for field in info.fields:
            assert f"| `{field.encode_name}` |" in text, field.encode_name
            if field.default not in (msgspec.NODEFAULT, None) and not isinstance(
                field.default, (dict, list)
            ):
                assert f"`{msgspec.json.encode(field.default).decode()}`" in text, field.name


def test_reference_documents_the_rate_ceiling_and_the_default_places() -> None:
    """The reference says what an omitted api.rate means, and where ledger and results go."""
    text = render_reference()
    assert 'Omitted: "auto" against a remote server, "none" against the sandbox or' in text
    assert "Omitted: ledger.sqlite in the out_dir" in text
    assert "out/&lt;name>/ beside the job file" in text
