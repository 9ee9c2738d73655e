"""The Modelfile checker: Ollama's documented instructions, parameters and quoting, and TEMPLATE read as a Go
template; each refusal names the line and what is allowed."""
import pytest

from training.engine.modelfile_check import GoTemplateError, ModelfileError, check, check_go_template, parse

GOOD = '''# a comment
FROM ./model.gguf
ADAPTER ./lora.gguf
PARAMETER temperature 0.7
PARAMETER num_ctx 4096
PARAMETER stop <|eot_id|>
PARAMETER stop "<|start_header_id|>"
TEMPLATE """{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}{{ .Content }}{{ if $last }}!{{ end }}
{{- else if eq .Role "assistant" }}{{ .Content }}
{{- end }}
{{- end }}"""
SYSTEM """You are
brief."""
MESSAGE user Is the sky blue?
MESSAGE assistant yes
LICENSE """MIT"""
'''


def test_a_good_modelfile_parses():
    commands = check(GOOD)
    assert [c.name for c in commands] == ["FROM", "ADAPTER", "PARAMETER", "PARAMETER", "PARAMETER", "PARAMETER",
                                          "TEMPLATE", "SYSTEM", "MESSAGE", "MESSAGE", "LICENSE"]
    assert commands[5].args == "stop <|start_header_id|>"
    assert next(c for c in commands if c.name == "SYSTEM").args == "You are\nbrief."


@pytest.mark.parametrize("text, expected", [
    ("ADAPTER ./a.gguf\n", "exactly one FROM"),
    ("FROM a\nFROM b\n", "line 2: a Modelfile has exactly one FROM"),
    ("FROM a\nPARAMETR top_k 3\n", "line 2: 'PARAMETR' is not an instruction; allowed: FROM"),
    ("FROM a\nPARAMETER top_kk 3\n", "line 2: 'top_kk' is not a parameter"),
    ("FROM a\nPARAMETER top_k 0.5\n", "line 2: PARAMETER top_k: '0.5' is not an integer"),
    ("FROM a\nPARAMETER temperature hot\n", "PARAMETER temperature: 'hot' is not a number"),
    ("FROM a\nPARAMETER use_mmap maybe\n", "'maybe' is not a true or false"),
    ("FROM a\nPARAMETER stop\n", "PARAMETER needs a name and a value"),
    ("FROM a\nMESSAGE robot hi\n", "MESSAGE role 'robot'; allowed: system, user, assistant"),
    ('FROM a\nSYSTEM """never closed\n', 'line 2: SYSTEM: the """ opened here is never closed'),
    ('FROM a\nSYSTEM "half\n', "the quoted value is not closed"),
    ('FROM a\nTEMPLATE """{{ if .System }}x"""\n', "TEMPLATE: line 1: this if is never closed"),
    ('FROM a\nTEMPLATE """{{ .System }"""\n', "never closed by }}"),
])
def test_refusals_name_the_line_and_what_is_allowed(text, expected):
    with pytest.raises(ModelfileError) as caught:
        check(text)
    assert expected in str(caught.value)


@pytest.mark.parametrize("template, expected", [
    ("{{ end }}", "closes nothing"),
    ("{{ else }}", "outside an if, range or with"),
    ("{{ range .Messages }}{{ .Content }}", "this range is never closed"),
    ("{{ .Sistem }}", ".Sistem is not a field"),
    ("{{ upper .System }}", "'upper' is not a template function"),
    ("{{ $x }}", "variable $x is not declared"),
    ("{{ $x = 1 }}", "assigned before it is declared"),
    ("{{ if (eq .Role \"user\" }}x{{ end }}", "a ( is never closed"),
    ("{{ }}", "an empty action"),
    ("{{ break }}", "outside a range"),
    ("{{ if }}{{ end }}", "if needs a pipeline"),
])
def test_go_template_problems(template, expected):
    with pytest.raises(GoTemplateError) as caught:
        check_go_template(template)
    assert expected in str(caught.value)


def test_go_template_forms_that_are_fine():
    check_go_template('{{/* a comment */}}{{ $first := true }}{{ range $i, $m := .Messages }}{{ if and $.System '
                      '$first }}{{ $.System }}{{ end }}{{ $first = false }}{{ $m.Content }}{{ else }}none{{ end }}'
                      '{{ "}}" }}{{ with .Tools }}{{ json . }}{{ end }}')


def test_parse_keeps_lines():
    assert [c.line for c in parse("# x\n\nFROM a\nSYSTEM hi\n")] == [3, 4]
