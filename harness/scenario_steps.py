"""``[[step]]`` tables into :class:`reference_impl.scenario.Step`: which keys and sides each action takes.

Its own module because the rules follow the executor (harness/execution/steps.py), not the TOML: a key or side
the executor would ignore while the model honours it is a false divergence, so the loader refuses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from contract.scenario import ACTIONS, SIDES, TRANSPORTS, Step
from harness.toml_reader import TomlReader, join_key

# Keys each action accepts besides "action" and "side": a key that the action would ignore is an error.
STEP_KEYS: dict[str, tuple[str, ...]] = {
    "set-capabilities": ("capabilities",),
    "set-parameters": ("parameters",),
    "migrate": ("transport",),
    "start-postcopy": (),
    "cancel": (),
    "wait": (),
    "cont": (),
    "stop": (),
    "snapshot-save": ("tag",),
    "snapshot-load": ("tag",),
    "qmp": ("command", "arguments"),
    "migrate-continue": (),
}
# The sides each action can act on, as harness/execution/steps.py runs them: start-postcopy, cancel,
# migrate-continue and wait always act on the migration of the source (MigrationPair), so another side
# would be ignored by the executor and honoured by the model (a false divergence); migrate from both
# sides at once is not a migration.
SOURCE_ONLY = ("source",)
ACTION_SIDES: dict[str, tuple[str, ...]] = {
    "migrate": ("source", "destination"),
    "start-postcopy": SOURCE_ONLY,
    "cancel": SOURCE_ONLY,
    "wait": SOURCE_ONLY,
    "migrate-continue": SOURCE_ONLY,
}


def parse_step(reader: TomlReader, table: Mapping[str, Any], key: str) -> Step:
    if "action" not in table:
        raise reader.error(join_key(key, "action"), "missing required key", ACTIONS)
    action = reader.choice(table["action"], join_key(key, "action"), ACTIONS)
    allowed_keys = ("action", "side", *STEP_KEYS[action])
    for name in table:
        if name not in allowed_keys:
            raise reader.error(join_key(key, name), f"not a key of action {action!r}", allowed_keys)
    side = reader.choice(table["side"], join_key(key, "side"), SIDES) if "side" in table else "source"
    action_sides = ACTION_SIDES.get(action, SIDES)
    if side not in action_sides:
        raise reader.error(join_key(key, "side"), f"action {action!r} does not act on side {side!r}", action_sides)
    fields: dict[str, Any] = {}
    if "capabilities" in table:
        fields["capabilities"] = reader.capabilities(table["capabilities"], join_key(key, "capabilities"))
    if "parameters" in table:
        fields["parameters"] = reader.parameters(table["parameters"], join_key(key, "parameters"))
    if "transport" in table:
        fields["transport"] = reader.choice(table["transport"], join_key(key, "transport"), TRANSPORTS)
    if "tag" in table:
        fields["tag"] = reader.string(table["tag"], join_key(key, "tag"))
    if action == "qmp":
        if "command" not in table:
            raise reader.error(join_key(key, "command"), "missing required key for action 'qmp'")
        fields["command"] = reader.string(table["command"], join_key(key, "command"))
        if "arguments" in table:
            fields["arguments"] = reader.qmp_arguments(table["arguments"], join_key(key, "arguments"))
    return Step(action=action, side=side, **fields)
