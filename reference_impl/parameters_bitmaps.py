"""The ``block-bitmap-mapping`` migration parameter: ``check_dirty_bitmap_mig_alias_map``
(migration/block-dirty-bitmap.c, the same in 7.2.22 and 10.0.2), which migrate_params_check calls after the
announce-* checks and prefixes "Invalid mapping given for block-bitmap-mapping: ".

Only the mapping's own consistency is checked when it is set: a node name that no block node has is accepted
(measured on 7.2.22, 10.0.2 and 10.2.2: a precopy with dirty-bitmaps then completes).
"""

from __future__ import annotations

from typing import Any

# sizeof_field(BlockDriverState, node_name) - 1; UINT8_MAX; BDRV_BITMAP_MAX_NAME_SIZE.
_MAX_NODE_NAME = 31
_MAX_ALIAS = 255
_MAX_BITMAP_NAME = 1023


def well_typed_mapping(value: Any) -> bool:
    """A list of {node-name, alias, bitmaps: [{name, alias}]} with string members (the only shape whose QAPI
    visitor errors the model does not need: anything else is left to NotModelled)."""
    if not isinstance(value, list):
        return False
    for node in value:
        if not isinstance(node, dict) or set(node) != {"node-name", "alias", "bitmaps"}:
            return False
        if not isinstance(node["node-name"], str) or not isinstance(node["alias"], str):
            return False
        bitmaps = node["bitmaps"]
        if not isinstance(bitmaps, list):
            return False
        for bitmap in bitmaps:
            if not isinstance(bitmap, dict) or set(bitmap) != {"name", "alias"}:
                return False
            if not all(isinstance(v, str) for v in bitmap.values()):
                return False
    return True


def _id_wellformed(text: str) -> bool:
    """``id_wellformed`` (util/id.c): a letter, then letters, digits, '-', '.', '_' (ASCII)."""
    if not text or not (text[0].isascii() and text[0].isalpha()):
        return False
    return all(c.isascii() and (c.isalnum() or c in "-._") for c in text[1:])


def _construct(mapping: list[dict[str, Any]], name_to_alias: bool) -> str | None:
    """``construct_alias_map`` in one direction: the first error."""
    seen: set[str] = set()
    for node in mapping:
        node_name, alias = node["node-name"], node["alias"]
        if not _id_wellformed(alias):
            return f"The node alias '{alias}' is not well-formed"
        if len(alias.encode()) > _MAX_ALIAS:
            return f"The node alias '{alias}' is longer than {_MAX_ALIAS} bytes"
        if len(node_name.encode()) > _MAX_NODE_NAME:
            return f"The node name '{node_name}' is longer than {_MAX_NODE_NAME} bytes"
        key = node_name if name_to_alias else alias
        if key in seen:
            return (
                f"The node name '{key}' is mapped twice" if name_to_alias else f"The node alias '{key}' is used twice"
            )
        seen.add(key)
        bitmaps_seen: set[str] = set()
        for bitmap in node["bitmaps"]:
            if len(bitmap["alias"].encode()) > _MAX_ALIAS:
                return f"The bitmap alias '{bitmap['alias']}' is longer than {_MAX_ALIAS} bytes"
            if len(bitmap["name"].encode()) > _MAX_BITMAP_NAME:
                return f"The bitmap name '{bitmap['name']}' is longer than {_MAX_BITMAP_NAME} bytes"
            bkey = bitmap["name"] if name_to_alias else bitmap["alias"]
            if bkey in bitmaps_seen:
                if name_to_alias:
                    return f"The bitmap '{node_name}'/'{bkey}' is mapped twice"
                return f"The bitmap alias '{alias}'/'{bkey}' is used twice"
            bitmaps_seen.add(bkey)
    return None


def alias_map_error(mapping: list[dict[str, Any]]) -> str | None:
    """``check_dirty_bitmap_mig_alias_map``: the outgoing direction (name -> alias) first, then the incoming."""
    return _construct(mapping, True) or _construct(mapping, False)
