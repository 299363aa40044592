# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""AWX configuration as code: every survey question and schedule variable must be a variable that
the job template's playbook accepts (a role argument spec of a role the playbook runs, or the
playbook's own vars), with a compatible type and choices. The playbook itself must pass
ansible-lint-free syntax check and its module arguments must validate (the run stops at the
first API call because no controller listens)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from ansible_collections.mlinfra.shared_cache.tests.unit.ops.playbooks import ansible_bin, ansible_env

ROOT = Path(__file__).resolve().parents[3]
PLAYBOOK = ROOT / "playbooks" / "awx_configure.yml"
AWX_VARS = ROOT / "playbooks" / "vars" / "awx.yml"
PREFIX = "mlinfra.shared_cache."
TASK_LISTS = ("tasks", "pre_tasks", "post_tasks", "handlers", "block", "rescue", "always")
ROLE_TASK_KEYS = (
    "include_role",
    "import_role",
    "ansible.builtin.include_role",
    "ansible.builtin.import_role",
)


def _load(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _role_dir(name):
    if name.startswith(PREFIX):
        name = name[len(PREFIX) :]
    return ROOT / "roles" / name


def role_options(name, seen=None):
    """Options of every entry point of a role's argument spec, plus those of its dependencies."""
    seen = set() if seen is None else seen
    if name in seen:
        return {}
    seen.add(name)
    rdir = _role_dir(name)
    assert rdir.is_dir(), "role %s used by a job template playbook does not exist" % name
    options = {}
    spec_file = rdir / "meta" / "argument_specs.yml"
    if spec_file.is_file():
        for entry in (_load(spec_file) or {}).get("argument_specs", {}).values():
            options.update(entry.get("options") or {})
    meta = rdir / "meta" / "main.yml"
    if meta.is_file():
        for dep in (_load(meta) or {}).get("dependencies") or []:
            dep_name = dep if isinstance(dep, str) else dep.get("role") or dep.get("name")
            options.update(role_options(dep_name, seen))
    return options


def _tasks_roles(tasks):
    for task in tasks or []:
        if not isinstance(task, dict):
            continue
        for key in ROLE_TASK_KEYS:
            if key in task:
                arg = task[key]
                yield arg if isinstance(arg, str) else arg["name"]
        for key in TASK_LISTS:
            if key in task:
                yield from _tasks_roles(task[key])


def _resolve_playbook(ref, base):
    if ref.startswith(PREFIX):
        return ROOT / "playbooks" / (ref[len(PREFIX) :].replace(".", "/") + ".yml")
    return (base / ref).resolve()


def playbook_variables(path, seen=None):
    """name -> option spec (or None for plain play vars) accepted by a playbook and its imports."""
    seen = set() if seen is None else seen
    path = Path(path)
    assert path.is_file(), "job template playbook %s does not exist" % path.relative_to(ROOT)
    if path in seen:
        return {}
    seen.add(path)
    found = {}
    for play in _load(path) or []:
        for key in ("import_playbook", "ansible.builtin.import_playbook"):
            if key in play:
                found.update(playbook_variables(_resolve_playbook(play[key], path.parent), seen))
        for name in play.get("vars") or {}:
            found.setdefault(name, None)
        for vf in play.get("vars_files") or []:
            for name in _load(path.parent / vf) or {}:
                found.setdefault(name, None)
        for prompt in play.get("vars_prompt") or []:
            found.setdefault(prompt["name"], None)
        roles = [r if isinstance(r, str) else r.get("role") or r.get("name") for r in play.get("roles") or []]
        for key in TASK_LISTS:
            roles.extend(_tasks_roles(play.get(key)))
        for role in roles:
            found.update(role_options(role))
    return found


SURVEY_TYPES = {
    "bool": {"multiplechoice"},
    "list": {"multiselect"},
    "int": {"integer"},
    "float": {"float", "integer"},
    "str": {"text", "textarea", "password", "multiplechoice"},
    "path": {"text", "textarea", "multiplechoice"},
    "raw": {"text", "textarea", "multiplechoice", "multiselect", "integer", "float"},
}


def survey_problems(question, accepted):
    """Why a survey question could pass something its playbook does not accept ([] = fine)."""
    var = question["variable"]
    if var not in accepted:
        return ["survey variable %r is not declared by any argument spec or play var" % var]
    spec = accepted[var]
    if spec is None:
        return []
    problems = []
    vtype = spec.get("type", "str")
    if question["type"] not in SURVEY_TYPES.get(vtype, set()):
        problems.append("%s: survey type %s cannot produce a %s" % (var, question["type"], vtype))
    choices = [str(c) for c in question.get("choices") or []]
    if vtype == "bool" and not set(choices) <= {"true", "false"}:
        problems.append("%s: choices %s are not booleans" % (var, choices))
    allowed = spec.get("choices")
    if allowed and vtype == "list":
        allowed = None
    if vtype == "list" and spec.get("choices"):
        allowed = spec["choices"]
    if allowed and not set(choices) <= {str(c) for c in allowed}:
        problems.append("%s: choices %s outside %s" % (var, sorted(set(choices) - set(map(str, allowed))), allowed))
    default = question.get("default")
    if choices and default not in (None, ""):
        picked = default.split("\n") if question["type"] == "multiselect" else [str(default)]
        if not set(picked) <= set(choices):
            problems.append("%s: default %r is not among the choices" % (var, default))
    return problems


AWX = _load(AWX_VARS)
TEMPLATES = {t["name"]: t for t in AWX["shared_cache_awx_job_templates"]}


def test_templates_cover_every_operation():
    assert set(TEMPLATES) == {"site", "prune", "report", "prefetch"}
    assert [q["variable"] for q in TEMPLATES["prune"]["survey"]] == ["cache_prune_dry_run", "cache_prune_caches"]
    dry_run = TEMPLATES["prune"]["survey"][0]
    assert dry_run["default"] == "true", "an interactive prune must default to a dry run"
    schedules = {s["template"]: s["rrule"] for s in AWX["shared_cache_awx_schedules"]}
    assert "FREQ=WEEKLY" in schedules["prune"]
    assert "FREQ=DAILY" in schedules["report"]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_survey_variables_are_accepted_by_the_playbook(name):
    template = TEMPLATES[name]
    accepted = playbook_variables(ROOT / template["playbook"])
    problems = [p for q in template["survey"] for p in survey_problems(q, accepted)]
    assert not problems, problems


@pytest.mark.parametrize("schedule", AWX["shared_cache_awx_schedules"], ids=lambda s: s["name"])
def test_schedule_extra_data_is_accepted(schedule):
    accepted = playbook_variables(ROOT / TEMPLATES[schedule["template"]]["playbook"])
    unknown = sorted(set(schedule["extra_data"]) - set(accepted))
    assert not unknown, "schedule %s passes undeclared variables %s" % (schedule["name"], unknown)


def test_checker_rejects_unknown_and_mistyped_variables():
    accepted = {
        "cache_prune_dry_run": {"type": "bool"},
        "cache_prefetch_kinds": {"type": "list", "elements": "str", "choices": ["pip", "npm"]},
    }
    assert survey_problems({"variable": "not_declared", "type": "text"}, accepted)
    assert survey_problems({"variable": "cache_prune_dry_run", "type": "text"}, accepted)
    assert survey_problems(
        {"variable": "cache_prune_dry_run", "type": "multiplechoice", "choices": ["yes please", "no"]}, accepted
    )
    assert survey_problems(
        {"variable": "cache_prefetch_kinds", "type": "multiselect", "choices": ["pip", "cargo"]}, accepted
    )
    assert not survey_problems(
        {"variable": "cache_prefetch_kinds", "type": "multiselect", "choices": ["pip"], "default": "pip"}, accepted
    )


def test_prune_choices_are_catalog_caches():
    catalog = _load(ROOT / "roles" / "catalog" / "defaults" / "main.yml")["shared_cache_caches"]
    question = TEMPLATES["prune"]["survey"][1]
    assert set(question["choices"]) <= set(catalog)
    # external caches are pruned by their own tools, never offered
    assert not [c for c in question["choices"] if catalog[c].get("format") == "external"]


def test_no_template_prompts_for_free_extra_vars():
    play = _load(PLAYBOOK)[0]
    jt = next(t for t in play["tasks"] if "awx.awx.job_template" in t)
    assert jt["awx.awx.job_template"]["ask_variables_on_launch"] is False


@pytest.mark.ansible_package
def test_awx_configure_syntax():
    pytest.importorskip("ansible_collections.awx.awx", reason="awx.awx (from the ansible package) not installed")
    run = subprocess.run(
        [ansible_bin("ansible-playbook"), "--syntax-check", str(PLAYBOOK)],
        capture_output=True,
        check=False,
        text=True,
        env=ansible_env(),
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.ansible_package
@pytest.mark.parametrize(
    "task",
    [
        "Execution environment",
        "Project (this repository)",
        "Inventory source (file in the project)",
        "Job templates",
        "Schedules",
    ],
)
def test_awx_module_arguments_validate(task):
    """Start at each task against a closed loopback port: the awx.awx modules must get as far as the
    API call (their argument specs accepted every parameter), so the only error is the connection."""
    pytest.importorskip("ansible_collections.awx.awx")
    run = subprocess.run(
        [
            ansible_bin("ansible-playbook"),
            str(PLAYBOOK),
            "--start-at-task",
            task,
            "-e",
            "shared_cache_awx_host=https://127.0.0.1:9",
            "-e",
            "controller_oauthtoken=dummy",
        ],
        capture_output=True,
        check=False,
        text=True,
        env=ansible_env(),
        cwd=ROOT,
        timeout=300,
    )
    out = json.loads(run.stdout)
    first = next(t for t in out["plays"][0]["tasks"] if t["task"]["name"] == task)
    result = first["hosts"]["localhost"]
    messages = [r.get("msg", "") for r in result.get("results", [result])]
    assert messages
    for msg in messages:
        assert "127.0.0.1:9" in msg and "Connection refused" in msg, msg


def _groups(node, out):
    for name, child in (node.get("children") or {}).items():
        out.add(name)
        _groups(child or {}, out)
    return out


def test_limits_name_groups_of_the_inventory_source():
    inventory = _load(ROOT / AWX["shared_cache_awx_inventory_source_path"])
    groups = _groups(inventory["all"], set())
    for template in TEMPLATES.values():
        if "limit" in template:
            assert template["limit"] in groups, template["name"]
    assert TEMPLATES["prune"]["limit"] == "cache_servers"
