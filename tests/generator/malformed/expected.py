"""The malformed-matrix corpus: each file here, and every diagnostic it must produce.

Every file is `tests/generator/base_matrix.yaml` with one or a few edits (line numbers below are the
edited file's). Each diagnostic is written `file:line:column: message part`, as the CLI prints it
without the directory and the `error:`; a file's diagnostics stand in the order they are reported
(by position). The message part is a stable piece of the message: what is wrong, the valid choices
and the close match. Used by the loader tests and the CLI tests (exit 2, --out untouched), so a new
malformed case is one file plus its diagnostics here.
"""

from __future__ import annotations

import re
from pathlib import Path

CORPUS_DIR = Path(__file__).parent
BASE_MATRIX = CORPUS_DIR.parent / "base_matrix.yaml"

Expected = tuple[tuple[int, int, str], ...]
_DIAGNOSTIC = re.compile(r"(?P<name>[^:]+\.yaml):(?P<line>\d+):(?P<column>\d+): (?P<part>.+)", re.S)

_TOP_KEYS = "a2a_backends, dispatch_formats, quant_methods, exclusions"
_FORMAT_KEYS = (
    "description, dispatch_output, combine_input, layout, id_space, sink, row_count, wire, "
    "weighting, truncate_to_recv_cap"
)
_NAME_RULE = (
    "names are lowercase letters and digits joined by single underscores, starting with a letter"
)
_DISPATCH_OUTPUTS = (
    "StandardDispatchOutput, DeepEPNormalDispatchOutput, DeepEPLLDispatchOutput, "
    "MoriEPNormalDispatchOutput, MoriEPLLDispatchOutput"
)


def _by_file(*diagnostics: str) -> dict[str, Expected]:
    """Each file's (line, column, message part) triples, from diagnostics written as
    `file:line:column: message part`, in the order given."""
    found: dict[str, list[tuple[int, int, str]]] = {}
    for diagnostic in diagnostics:
        match = _DIAGNOSTIC.fullmatch(diagnostic)
        if match is None:
            raise ValueError(f"not file:line:column: message part: {diagnostic!r}")
        entry = (int(match["line"]), int(match["column"]), match["part"])
        found.setdefault(match["name"], []).append(entry)
    return {name: tuple(entries) for name, entries in found.items()}


EXPECTED = _by_file(
    # -- keys --------------------------------------------------------------------------------
    f"unknown_top_key.yaml:66:1: top level: unknown key 'exclusion' (did you mean 'exclusions'?); "
    f"valid keys: {_TOP_KEYS}",
    "missing_top_key.yaml:2:1: top level: missing key 'quant_methods'",
    "unknown_backend_key.yaml:8:5: "
    "a2a_backends.deepep: unknown key 'formatz' (did you mean 'formats'?); "
    "valid keys: description, formats",
    "unknown_key_no_match.yaml:21:5: "
    f"dispatch_formats.standard: unknown key 'colour'; valid keys: {_FORMAT_KEYS}",
    "missing_property.yaml:32:3: dispatch_formats.deepep_ll: missing key 'sink'",
    "duplicate_property.yaml:15:5: "
    "dispatch_formats.standard: duplicate key 'layout' (first at line 14:5)",
    "duplicate_backend.yaml:9:3: a2a_backends: duplicate key 'none' (first at line 3:3)",
    "merge_key.yaml:67:5: exclusions[0]: merge keys ('<<') are not supported; write the keys out",
    "merge_key.yaml:67:5: exclusions[0]: missing key 'a2a'",
    "boolean_name.yaml:3:3: "
    "a2a_backends: expected a name as key, got 'yes', which YAML reads as a boolean; "
    "quote it if it is meant as text",
    # -- names -------------------------------------------------------------------------------
    f"uppercase_name.yaml:6:3: a2a_backends: invalid name 'DeepEP': {_NAME_RULE}",
    f"double_underscore_name.yaml:55:3: quant_methods: invalid name 'fp8__block': {_NAME_RULE}",
    # -- values: types -----------------------------------------------------------------------
    "python_tag.yaml:4:18: a2a_backends.none.description: expected a string, got a value tagged "
    "'!!python/object/apply:os.system' (tags are not allowed",
    "null_description.yaml:4:17: "
    "a2a_backends.none.description: expected a string, got nothing (null)",
    "date_description.yaml:4:18: "
    "a2a_backends.none.description: expected a string, got '2024-01-01', which YAML "
    "reads as a date; quote it if it is meant as text",
    "yes_for_bool.yaml:20:27: "
    "dispatch_formats.standard.truncate_to_recv_cap: expected true or false, "
    "got 'yes' (YAML 1.1 reads it as a boolean, other readers do not)",
    "quoted_bool.yaml:50:24: quant_methods.unquant.has_weight_scales: expected true or false, "
    "got the string 'false'",
    "unquoted_no.yaml:46:19: "
    "quant_methods.unquant.kernel_quant: 'No' is read as a boolean; quote it: \"No\"",
    "list_for_mapping.yaml:9:19: "
    "dispatch_formats: expected a mapping of names to entries, got a list",
    "exclusions_mapping.yaml:66:13: exclusions: expected a list (write [] for none), got a mapping",
    "exclusion_not_mapping.yaml:67:5: "
    "exclusions[0]: expected a mapping with a2a, quant, dispatch, reason, "
    "got a string",
    # -- values: choices ---------------------------------------------------------------------
    "unknown_layout.yaml:14:13: "
    "dispatch_formats.standard.layout: unknown value 'flatt' (did you mean 'flat'?); "
    "valid values: flat, masked_slabs",
    "unknown_dispatch_output.yaml:12:22: dispatch_formats.standard.dispatch_output: unknown value "
    "'StandardDispatchOuptut' (did you mean 'StandardDispatchOutput'?); "
    f"valid values: {_DISPATCH_OUTPUTS}",
    "unknown_weight_dtype.yaml:60:19: "
    "quant_methods.fp8_block.weight_dtype: unknown value 'float8_e4m3' "
    "(did you mean 'float8_e4m3fn'?); valid values: bfloat16,",
    # -- cross-references --------------------------------------------------------------------
    "unknown_format_ref.yaml:8:30: "
    "a2a_backends.deepep.formats[1]: unknown dispatch format 'deepep_lll' "
    "(did you mean 'deepep_ll'?); defined: standard, deepep_normal, deepep_ll",
    "format_listed_twice.yaml:8:41: "
    "a2a_backends.deepep.formats[2]: 'deepep_normal' is listed twice "
    "(first at line 8:15)",
    "exclusion_unknown_quant.yaml:68:12: exclusions[0].quant: unknown quant method 'fp8_blok' "
    "(did you mean 'fp8_block'?); valid: *, unquant, fp8_block",
    "exclusion_missing_reason.yaml:67:5: exclusions[0]: missing key 'reason'",
    "exclusion_empty_reason.yaml:70:13: exclusions[0].reason: must not be empty",
    # -- consistency between properties ------------------------------------------------------
    "masked_slabs_global_ids.yaml:36:13: "
    "dispatch_formats.deepep_ll.layout: 'masked_slabs' requires id_space "
    "'slab_index', not 'global' (line 37)",
    "masked_slabs_global_ids.yaml:38:11: "
    "dispatch_formats.deepep_ll.sink: 'local' requires id_space "
    "'local_with_minus_one' or 'slab_index', not 'global' (line 37)",
    "local_ids_without_sink.yaml:26:15: "
    "dispatch_formats.deepep_normal.id_space: 'local_with_minus_one' requires sink "
    "'local', not 'none' (line 27)",
    "truncate_without_total_recv.yaml:20:27: "
    "dispatch_formats.standard.truncate_to_recv_cap: 'true' requires row_count "
    "'total_recv', not 'shape' (line 17)",
    "combine_input_mismatch.yaml:13:20: "
    "dispatch_formats.standard.combine_input: 'DeepEPNormalCombineInput' requires "
    "dispatch_output 'DeepEPNormalDispatchOutput', not 'StandardDispatchOutput' "
    "(line 12)",
    "quant_rule.yaml:48:18: quant_methods.unquant.weight_kind: 'bf16' requires kernel_quant 'No', "
    "not 'per_Token' (line 46)",
    # -- enumeration -------------------------------------------------------------------------
    "stale_exclusion.yaml:67:5: "
    "exclusion none/fp8_block/deepep_ll matches no combination: a2a backend 'none' "
    "does not produce dispatch format 'deepep_ll' (it produces: standard)",
    "duplicate_exclusion.yaml:71:5: "
    "exclusion deepep/fp8_block/deepep_ll removes nothing: every combination it "
    "matches is already excluded by the exclusion(s) at line(s) 67",
    "everything_excluded.yaml:67:5: the exclusions remove all 6 combinations: nothing to generate",
    "empty_backends.yaml:2:15: a2a_backends: empty; define at least one a2a backend",
    "empty_quant_methods.yaml:43:16: quant_methods: empty; define at least one quant method",
    "empty_formats_list.yaml:5:14: "
    "a2a_backends.none.formats: empty; list at least one dispatch format",
    # -- documents ---------------------------------------------------------------------------
    f"list_document.yaml:1:1: the matrix must be a mapping with the keys {_TOP_KEYS}, got a list",
    "scalar_document.yaml:1:1: "
    f"the matrix must be a mapping with the keys {_TOP_KEYS}, got a string",
    f"empty_file.yaml:1:1: the matrix file is empty; expected a mapping with {_TOP_KEYS}",
    "comments_only.yaml:1:1: the matrix file is empty",
    "two_documents.yaml:71:1: invalid YAML: expected a single document in the stream at line 2:1, "
    "but found another document",
    # -- syntax and encoding -----------------------------------------------------------------
    "bad_indentation.yaml:8:4: "
    "invalid YAML: while parsing a block mapping at line 3:3, expected <block end>, "
    "but found '<block mapping start>'",
    "unclosed_flow.yaml:6:9: "
    "invalid YAML: while parsing a flow sequence at line 5:14, expected ',' or ']', "
    "but got ':'",
    "tab_indentation.yaml:4:1: "
    "invalid YAML: while scanning for the next token, found character '\\t' that "
    "cannot start any token; indent with spaces",
    "unquoted_wildcard.yaml:67:11: "
    "invalid YAML: while scanning an alias at line 67:10, expected alphabetic or "
    "numeric character, but found '\\n'; a wildcard is written '*', in quotes",
    "control_character.yaml:4:24: invalid YAML: control character U+0007 is not allowed",
    "not_utf8.yaml:4:24: not UTF-8 text: byte 0xff (invalid start byte)",
    # -- several problems at once, reported in file order -------------------------------------
    "many_problems.yaml:8:5: a2a_backends.deepep: unknown key 'formatz' (did you mean 'formats'?)",
    "many_problems.yaml:14:13: "
    "dispatch_formats.standard.layout: unknown value 'flatt' (did you mean 'flat'?)",
    "many_problems.yaml:57:19: quant_methods.fp8_block.kernel_quant: unknown value 'per_128x12' "
    "(did you mean 'per_128x128'?)",
    "many_problems.yaml:68:12: exclusions[0].quant: unknown quant method 'fp8_blok' "
    "(did you mean 'fp8_block'?)",
)
