"""Job files: shapes, ${ENV} expansion, line-numbered errors (asserted word for word), schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.pretty import pretty_repr

from synap_bulk.errors import InsecureURL, SpecError
from synap_bulk.spec import (
    AssignMarkersSpec,
    ExportAttemptsSpec,
    RequestSpec,
    UserImportSpec,
    job_schema,
    load_job,
)
from synap_bulk.urls import check_base_url

BASE = """\
version: 1
name: spring-2027
api:
  base_url: sandbox
  token: ${SYNAP_TOKEN:-p:sandbox}
  rate: 20
sandbox: {seed: 7, users: 0}
task:
  kind: user-import
  source: candidates.csv
  match: externalId
  fields: {name: "{first_name} {last_name}", externalId: "{candidate_no}"}
  groups: ["{cohort}", 12]
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SYNAP_TOKEN", "RATE", "SECRET_RATE"):
        monkeypatch.delenv(name, raising=False)


def write(tmp_path: Path, text: str, name: str = "import.yaml") -> Path:
    jobs = tmp_path / "jobs"
    jobs.mkdir(exist_ok=True)
    path = jobs / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_job(path)
    return str(info.value).replace(str(tmp_path) + "/", "")


def test_the_api_profile_is_resolved_once_at_load(tmp_path: Path) -> None:
    """The job's API profile (defaults plus api.profile) is resolved when the job loads, and
    every part of a run reads that one object."""
    from synap_bulk.profile import DEFAULT_PROFILE

    assert load_job(write(tmp_path, BASE)).profile is DEFAULT_PROFILE
    text = BASE.replace("  rate: 20\n", "  rate: 20\n  profile: {attempts_path: tries}\n")
    job = load_job(write(tmp_path, text))
    assert job.profile.attempts_path == "tries"
    assert job.profile.users_path == DEFAULT_PROFILE.users_path


def test_valid_job_loads_with_defaults_and_lines(tmp_path: Path) -> None:
    """A valid job converts to Structs with defaults, numbers kept as text where a string is
    wanted, and every key's line known."""
    job = load_job(write(tmp_path, BASE))
    task = job.spec.task
    assert isinstance(task, UserImportSpec)
    assert task.kind == "user-import"
    assert task.mode == "upsert"
    assert task.groups == ["{cohort}", "12"]
    assert job.spec.api.rate == 20.0
    assert job.spec.api.token == "p:sandbox"
    assert job.spec.run.max_item_attempts == 5
    assert job.spec.run.breaker.window == 200
    assert job.line_of("api.rate") == 6
    assert job.line_of("task.groups[1]") == 13
    assert job.line_of("task.fields.name") == 12
    assert job.line_of("task.mode") == 8  # absent: the nearest written parent
    assert job.resolve("candidates.csv") == tmp_path / "jobs" / "candidates.csv"
    assert job.dir == tmp_path / "jobs"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "rate: 20",
            "rate: fast",
            'jobs/import.yaml:6: api.rate: expected a number >= 0.1 or "auto" or "none", '
            'got "fast"',
        ),
        (
            "  match: externalId",
            "  match: externalId\n  sourc: x",
            'jobs/import.yaml:12: task.sourc: unknown key (did you mean "source"?)',
        ),
        (
            "rate: 20",
            "colour: blue",
            "jobs/import.yaml:6: api.colour: unknown key (expected one of: base_url, token, "
            "token_file, rate, concurrency, subject_user, timeout, profile)",
        ),
        (
            "rate: 20",
            "concurrency: many",
            'jobs/import.yaml:6: api.concurrency: expected an integer >= 1 and <= 1000, got "many"',
        ),
        (
            "  source: candidates.csv\n",
            "",
            'jobs/import.yaml:8: task: missing required key "source"',
        ),
        (
            "match: externalId",
            "match: email",
            'jobs/import.yaml:11: task.match: expected one of "emailAddress", "externalId", '
            'got "email"',
        ),
        (
            "kind: user-import",
            "kind: user-imports",
            'jobs/import.yaml:9: task.kind: expected one of "user-import", "assign-markers", '
            '"export-attempts", "export", "request", "group-sync", got "user-imports"',
        ),
        (
            '{name: "{first_name} {last_name}",',
            "{name: [1],",
            "jobs/import.yaml:12: task.fields.name: expected a string, got a list",
        ),
        ("version: 1", "version: 2", "jobs/import.yaml:1: version: expected 1, got 2"),
        (
            "base_url: sandbox",
            "base_url: http://example.com/v3",
            'jobs/import.yaml:4: api.base_url: expected "sandbox" or an https:// URL '
            '(http:// only for localhost), got "http://example.com/v3"',
        ),
        (
            "base_url: sandbox",
            "base_url: https://api.synap.ac/v3",
            "jobs/import.yaml:7: sandbox: a sandbox section is only allowed when "
            'api.base_url is "sandbox"',
        ),
        (
            "rate: 20",
            "profile: {pagesize: 3}",
            'jobs/import.yaml:6: api.profile.pagesize: unknown key (did you mean "page_size"?)',
        ),
        (
            "rate: 20",
            "profile: {page_size: big}",
            'jobs/import.yaml:6: api.profile.page_size: expected an integer, got "big"',
        ),
        (
            "  rate: 20",
            "  rate: 20\n  rate: 3",
            'jobs/import.yaml:7: api.rate: duplicate key "rate" (first on line 6)',
        ),
        (
            "  rate: 20",
            "  rate: [20",
            "jobs/import.yaml:7: invalid YAML: expected ',' or ']', but got ':'",
        ),
        (
            "${SYNAP_TOKEN:-p:sandbox}",
            "${SYNAP_TOKEN}",
            "jobs/import.yaml:5: api.token: environment variable SYNAP_TOKEN is not set",
        ),
    ],
)
def test_error_messages_word_for_word(tmp_path: Path, old: str, new: str, expected: str) -> None:
    """Each kind of mistake gives `file:line: path: message` with exactly this wording."""
    assert old in BASE
    assert error_of(tmp_path, BASE.replace(old, new, 1)) == expected


def test_env_expansion_and_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """${VAR} takes the environment's value, ${VAR:-default} falls back, $$ is a literal $, and a
    plain scalar expanded to a number is a number."""
    monkeypatch.setenv("SYNAP_TOKEN", "p:real")
    monkeypatch.setenv("RATE", "35")
    text = BASE.replace("rate: 20", "rate: ${RATE}").replace(
        '"{cohort}", 12', '"{cohort}", "cost $$5", "${COHORT:-spring}"'
    )
    job = load_job(write(tmp_path, text))
    assert job.spec.api.token == "p:real"
    assert job.spec.api.rate == 35.0
    assert isinstance(job.spec.task, UserImportSpec)
    assert job.spec.task.groups == ["{cohort}", "cost $5", "spring"]


def test_errors_never_quote_environment_values_or_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad value that came from the environment is named by its variable, never shown."""
    monkeypatch.setenv("SECRET_RATE", "p:very-secret")
    msg = error_of(tmp_path, BASE.replace("rate: 20", "rate: ${SECRET_RATE}"))
    assert msg == (
        'jobs/import.yaml:6: api.rate: expected a number >= 0.1 or "auto" or "none", '
        "got the value of ${SECRET_RATE}"
    )
    assert "very-secret" not in msg
    msg = error_of(tmp_path, BASE.replace("${SYNAP_TOKEN:-p:sandbox}", "[p:secret]"))
    assert msg == "jobs/import.yaml:5: api.token: expected a string, got a value (not shown)"
    job = load_job(write(tmp_path, BASE.replace("${SYNAP_TOKEN:-p:sandbox}", "p:secret")))
    assert "p:secret" not in repr(job.spec)
    assert "p:secret" not in pretty_repr(job.spec)
    assert job.spec.api.token == "p:secret"


@pytest.mark.parametrize(
    "url",
    [
        "https://api.synap.ac/v3",
        "http://localhost:8080/v3",
        "HTTP://127.0.0.1/v3/",
        "http://[::1]:8080/v3",
        "http://example.com/v3",
        "http://localhost.example.com/v3",
        "ftp://localhost/v3",
        "https:///v3",
        "http://[::1",
        "https://api.synap.ac/v3?page=2",
        "nonsense",
    ],
)
def test_base_url_follows_the_clients_rule(tmp_path: Path, url: str) -> None:
    """A job loads exactly when the client would accept its base URL; else an error at its line."""
    text = BASE.replace("sandbox: {seed: 7, users: 0}\n", "").replace(
        "base_url: sandbox", f"base_url: {json.dumps(url)}"
    )
    try:
        check_base_url(url)
    except InsecureURL:
        assert error_of(tmp_path, text) == (
            'jobs/import.yaml:4: api.base_url: expected "sandbox" or an https:// URL '
            f"(http:// only for localhost), got {json.dumps(url)}"
        )
    else:
        assert load_job(write(tmp_path, text)).spec.api.base_url == url


def test_task_kinds_and_cross_field_rules(tmp_path: Path) -> None:
    """Every task kind loads; assign-markers column maps take known keys only; a reconcilable
    request needs a lookup."""
    head = BASE.split("task:")[0]
    job = load_job(
        write(
            tmp_path,
            head + "task: {kind: assign-markers, role: moderating, exams: [101], strategy: random}",
        )
    )
    assert isinstance(job.spec.task, AssignMarkersSpec)
    assert job.spec.task.exams == ["101"]
    assert job.spec.task.statuses == ["submitted"]
    job = load_job(
        write(tmp_path, head + "task: {kind: export-attempts, output: out.ndjson, format: csv}")
    )
    assert isinstance(job.spec.task, ExportAttemptsSpec)
    assert job.spec.task.mode == "pages"
    body = (
        "task:\n  kind: request\n  source: t.csv\n  method: POST\n  path: attempt-timer-resets\n"
        "  body: {data: {attributes: {reason: '{reason}'}}}\n"
    )
    job = load_job(write(tmp_path, head + body))
    assert isinstance(job.spec.task, RequestSpec)
    assert job.line_of("task.body.data.attributes.reason") == 13

    cols = head + (
        "task:\n  kind: assign-markers\n  role: markers\n  mapping: m.csv\n"
        "  mapping_columns: {attempt: a, tutor: t}\n"
    )
    assert error_of(tmp_path, cols) == (
        "jobs/import.yaml:12: task.mapping_columns.tutor: unknown key "
        "(expected one of: attempt, candidate, exam, marker)"
    )
    reconcilable = head + body + "  safety: reconcilable\n"
    assert error_of(tmp_path, reconcilable) == (
        "jobs/import.yaml:14: task.safety: a reconcilable request needs a lookup "
        "(a GET that finds what the request created)"
    )


def test_file_level_errors(tmp_path: Path) -> None:
    """A missing, empty or non-mapping file is a SpecError naming the file."""
    with pytest.raises(SpecError) as info:
        load_job(tmp_path / "nope.yaml")
    assert str(info.value) == f"{tmp_path}/nope.yaml: no such job file"
    assert error_of(tmp_path, "") == "jobs/import.yaml:1: the job file is empty"
    assert error_of(tmp_path, "- a\n") == (
        "jobs/import.yaml:1: expected a mapping at the top of the job file, got a list"
    )


def test_task_hash_tracks_the_task_section_only(tmp_path: Path) -> None:
    """The task hash changes with the task section, not with api settings or explicit defaults."""
    h1 = load_job(write(tmp_path, BASE)).task_hash()
    h2 = load_job(write(tmp_path, BASE.replace("rate: 20", "rate: 5"))).task_hash()
    h3 = load_job(write(tmp_path, BASE + "  mode: upsert\n")).task_hash()
    h4 = load_job(write(tmp_path, BASE + "  mode: create\n")).task_hash()
    assert h1 == h2 == h3
    assert h4 != h1
    assert len(h1) == 64


def test_schema_describes_every_task_kind() -> None:
    """The JSON Schema names each task kind by a const kind and forbids unknown keys."""
    schema = job_schema()
    defs = schema["$defs"]
    for name in ("UserImportSpec", "AssignMarkersSpec", "ExportAttemptsSpec", "RequestSpec"):
        assert defs[name]["additionalProperties"] is False
    assert defs["UserImportSpec"]["properties"]["kind"]["const"] == "user-import"
    assert schema["required"] == ["version", "name", "api", "task"]
    assert schema["additionalProperties"] is False


def _validator() -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    schema = job_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _errors(data: Any) -> list[tuple[str, str]]:
    return [
        (".".join(str(p) for p in e.absolute_path), e.message)
        for e in _validator().iter_errors(data)
    ]


DEMO_JOBS = sorted((Path(__file__).resolve().parent.parent / "jobs" / "demo").glob("*.yaml"))


def test_schema_is_draft_2020_12_with_an_id() -> None:
    """The schema declares its dialect (draft 2020-12) and its $id, and is itself valid."""
    schema = job_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"]
    _validator()


def test_schema_gives_every_property_a_description_and_its_default() -> None:
    """Every property of every section has a description, and every optional one its default."""
    schema = job_schema()
    sections = [("", schema)] + [(name, d) for name, d in schema["$defs"].items()]
    checked = 0
    for name, node in sections:
        required = set(node.get("required", ()))
        for key, prop in node.get("properties", {}).items():
            checked += 1
            assert prop.get("description"), f"{name}.{key} has no description"
            if key not in required and key != "kind":
                assert "default" in prop, f"{name}.{key} has no default"
    assert checked > 90
    rate = schema["$defs"]["ApiSpec"]["properties"]["rate"]
    assert "no ceiling" in rate["description"]
    assert rate["default"] is None


@pytest.mark.parametrize("path", DEMO_JOBS, ids=[p.name for p in DEMO_JOBS])
def test_every_demo_job_is_valid_under_the_schema(path: Path) -> None:
    """Each job of jobs/demo, read with yaml.safe_load, passes the schema with no error."""
    assert _errors(yaml.safe_load(path.read_text(encoding="utf-8"))) == []


def _base() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(BASE)
    data["task"]["groups"] = ["{cohort}"]  # the schema wants text where load_job turns 12 to "12"
    return data


def test_the_base_job_is_valid_under_the_schema() -> None:
    """The job these tests start from is valid, ${VAR} strings and all."""
    assert _errors(_base()) == []


def test_a_wrong_enum_value_is_reported_inside_the_chosen_task_kind() -> None:
    """`match: email` is one error at task.match naming the allowed values, not "none of"."""
    data = _base()
    data["task"]["match"] = "email"
    assert _errors(data) == [("task.match", "'email' is not one of ['emailAddress', 'externalId']")]


def test_an_unknown_task_kind_is_reported_at_task_kind() -> None:
    """An unknown kind is one error at task.kind listing the kinds."""
    data = _base()
    data["task"]["kind"] = "user-export"
    [(where, message)] = _errors(data)
    assert where == "task.kind"
    assert "'user-import', 'assign-markers', 'export-attempts', 'export', 'request'" in message


def test_an_unknown_sandbox_key_is_refused_by_the_schema() -> None:
    """`sandbox: {userz: 5}` is refused at sandbox; known keys are typed (users: an integer)."""
    data = _base()
    data["sandbox"] = {"userz": 5}
    assert _errors(data) == [
        ("sandbox", "Additional properties are not allowed ('userz' was unexpected)")
    ]
    data["sandbox"] = {"users": "many"}
    assert [where for where, _ in _errors(data)] == ["sandbox.users"]
    data["sandbox"] = None
    assert _errors(data) == []


def test_an_unknown_top_level_key_is_refused_by_the_schema() -> None:
    """A key the job file does not have (`tasks:`) is refused at the top level."""
    data = _base()
    data["tasks"] = data["task"]
    assert _errors(data) == [("", "Additional properties are not allowed ('tasks' was unexpected)")]


def test_sandbox_section_is_checked_against_the_sandbox_config(tmp_path: Path) -> None:
    """A sandbox key the simulator does not know is refused at its line."""
    msg = error_of(tmp_path, BASE.replace("users: 0}", "users: 0, colour: red}"))
    assert msg.startswith("jobs/import.yaml:7: sandbox.colour: unknown key (expected one of: seed,")


def test_a_job_file_over_one_mebibyte_is_refused_unread(tmp_path: Path) -> None:
    """A job file larger than 1 MiB is a SpecError naming the file; exactly 1 MiB still parses."""
    big = BASE + "#" * (1 << 20)
    assert error_of(tmp_path, big) == "jobs/import.yaml: the job file is larger than 1048576 bytes"
    fits = BASE + "#" * ((1 << 20) - len(BASE.encode()))
    assert load_job(write(tmp_path, fits)).spec.name == "spring-2027"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "rate: 20",
            "rate: .inf",
            "jobs/import.yaml:6: api.rate: expected a finite number, got .inf",
        ),
        (
            "rate: 20",
            "timeout: .nan",
            "jobs/import.yaml:6: api.timeout: expected a finite number, got .nan",
        ),
        (
            "rate: 20",
            "rate: !fast 20",
            'jobs/import.yaml:6: api.rate: YAML tags are not allowed, got "!fast"',
        ),
        (
            "rate: 20",
            "concurrency: " + "1" * 5000,
            "jobs/import.yaml:6: api.concurrency: expected an integer of at most 100 characters, "
            "got one of 5000",
        ),
        (
            "token: ${SYNAP_TOKEN:-p:sandbox}",
            "token_file: missing.token",
            "jobs/import.yaml:5: api.token_file: no such file "
            "(a relative path is taken from the job's folder)",
        ),
        (
            "rate: 20",
            "rate: 20\nrun: {ledger: .}",
            "jobs/import.yaml:7: run.ledger: expected a file for the ledger, got a directory: jobs",
        ),
        (
            "rate: 20",
            "rate: 20\nrun: {out_dir: import.yaml}",
            "jobs/import.yaml:7: run.out_dir: expected a directory for the results, got a file: "
            "jobs/import.yaml",
        ),
    ],
)
def test_values_that_used_to_slip_past_validation(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    """A non-finite number, a tag, an unparsable integer, a missing token file, a ledger that is
    a directory and an out_dir that is a file are each refused at their line."""
    assert old in BASE
    assert error_of(tmp_path, BASE.replace(old, new, 1)) == expected


def test_an_existing_token_file_and_a_fresh_ledger_path_load(tmp_path: Path) -> None:
    """A token file that exists, a ledger not yet created and an out_dir not yet made load."""
    text = BASE.replace("token: ${SYNAP_TOKEN:-p:sandbox}", "token_file: t.token").replace(
        "rate: 20", "rate: 20\nrun: {ledger: state/ledger.db, out_dir: results}"
    )
    path = write(tmp_path, text)
    (path.parent / "t.token").write_text("p:x\n", encoding="utf-8")
    job = load_job(path)
    assert job.spec.api.token_file == "t.token"
    assert job.spec.run.ledger == "state/ledger.db"


def test_a_token_kept_carelessly_is_warned_about(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token written in the job file, or a token file others can read, gets a warning that
    names the place and never shows the token; ${SYNAP_TOKEN} and a private file do not."""
    monkeypatch.setenv("SYNAP_TOKEN", "p:from-env")
    assert (
        load_job(
            write(tmp_path, BASE.replace("${SYNAP_TOKEN:-p:sandbox}", "${SYNAP_TOKEN}"))
        ).secret_warnings()
        == []
    )
    literal = load_job(
        write(tmp_path, BASE.replace("${SYNAP_TOKEN:-p:sandbox}", "p:literal-secret"))
    )
    [warning] = literal.secret_warnings()
    assert warning.endswith(
        ":5: api.token is written in the job file; anyone who can read the file can use it: "
        "prefer token_file or ${SYNAP_TOKEN}"
    )
    assert "p:literal-secret" not in warning
    token = tmp_path / "jobs" / "token"
    token.write_text("p:in-a-file")
    text = BASE.replace("  token: ${SYNAP_TOKEN:-p:sandbox}\n", "  token_file: token\n")
    token.chmod(0o644)
    [warning] = load_job(write(tmp_path, text)).secret_warnings()
    assert warning == (
        f"{token}: the token file can be read by other users; restrict it with: chmod 600 {token}"
    )
    token.chmod(0o600)
    assert load_job(write(tmp_path, text)).secret_warnings() == []
