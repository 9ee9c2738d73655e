"""A team's lm_eval task never runs code on a worker: each escape in each templated field is refused at upload,
naming the field, with nothing saved; a suite stored without that check (as one from before it) fails its evaluation
on the real worker naming the field, with nothing run and nothing stored. The benign task's own end-to-end test is
in test_evaluation.py."""
import json
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError

from tests.factories import tiny_overrides
from tests.integration.conftest import wait_terminal
from tests.integration.evaluation.test_evaluation import DOCS, jsonl, wait_evaluation
from training.evaluation import services
from training.models import EvalExample, EvalSuite, Evaluation, Run
from training.runs import services as runs

pytestmark = pytest.mark.django_db(transaction=True)

MARKER = Path("/tmp") / f"tuneboard_escape_{uuid.uuid4().hex}"
COMMAND = f"touch {MARKER}"
PAYLOADS = {
    "lipsum": f"{{{{ lipsum.__globals__['os'].popen('{COMMAND}').read() }}}}",
    "cycler": f"{{{{ cycler.__init__.__globals__.os.popen('{COMMAND}').read() }}}}",
    "joiner": f"{{{{ joiner.__init__.__globals__['os'].popen('{COMMAND}').read() }}}}",
    "namespace": f"{{{{ namespace.__init__.__globals__.os.popen('{COMMAND}').read() }}}}",
    "self": f"{{{{ self.__init__.__globals__.__builtins__.__import__('os').popen('{COMMAND}').read() }}}}",
    "mro": "{% for c in ''.__class__.__mro__[1].__subclasses__() %}{% if c.__name__ == 'Popen' %}"
           f"{{{{ c('{COMMAND}', shell=True) }}}}{{% endif %}}{{% endfor %}}",
    # Passes the text check (the names are built at render time): refused by the sandbox on a document.
    "built": "{{ (question|attr('__in' ~ 'it__')|attr('__glo' ~ 'bals__'))['os'].popen('" + COMMAND + "') }}",
}
BENIGN = {"doc_to_text": "{{question}} Answer:", "doc_to_choice": "{{choices}}", "doc_to_target": "label"}


def task_yaml(field: str, payload: str) -> str:
    return json.dumps({"task": "team_colours", "output_type": "multiple_choice", **BENIGN, field: payload,
                       "metric_list": [{"metric": "acc"}]})


@pytest.mark.parametrize("field", ["doc_to_text", "doc_to_target", "doc_to_choice"])
@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_an_escape_in_a_templated_field_is_refused_at_upload_naming_the_field(team_member, field, payload):
    team, user, _ = team_member
    with pytest.raises(ValidationError) as exc:
        services.suite_create_from_upload(team=team, user=user, name="harness", file=jsonl(DOCS),
                                          filename="docs.jsonl", metric="lm_eval",
                                          task_config=task_yaml(field, PAYLOADS[payload]))
    message = exc.value.message_dict["task_config"][0]
    assert message.startswith(f"{field}: "), message
    assert not EvalSuite.objects.exists() and not any((settings.SUITES_DIR / str(team.id)).glob("*"))
    assert not MARKER.exists()


def stored_without_the_check(team, user, field: str, payload: str) -> EvalSuite:
    """A suite as one stored before templates were checked at upload: straight into the database."""
    folder = settings.SUITES_DIR / str(team.id)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}.jsonl"
    path.write_bytes(jsonl(DOCS).getvalue())
    return EvalSuite.objects.create(team=team, name=f"old {field}", path=str(path), format=EvalSuite.Format.HARNESS,
                                    rows=len(DOCS), sha256="0" * 64, metric="lm_eval",
                                    task_config=task_yaml(field, payload), created_by=user)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_stored_suite_that_escapes_fails_its_evaluation_naming_the_field_and_runs_nothing(
        celery_worker, tiny_model, team_member):
    team, user, dataset = team_member
    run = runs.run_create(team=team, user=user, dataset=dataset, queue=celery_worker.queue,
                          overrides=tiny_overrides(tiny_model, max_steps=5))
    run = wait_terminal(run, timeout=240)
    assert run.status == Run.Status.SUCCEEDED, run.error
    # One refused by its text before the harness loads the task, one by the sandbox inside the harness.
    for field, payload, says in [("doc_to_choice", PAYLOADS["lipsum"], "the template reads __globals__, lipsum"),
                                 ("doc_to_text", PAYLOADS["built"], "the template tried what a task's template may not "
                                                                   "(access to attribute '__init__' of 'str' object")]:
        suite = stored_without_the_check(team, user, field, payload)
        evaluation = wait_evaluation(services.evaluation_create(suite=suite, user=user, run=run))
        assert evaluation.status == Evaluation.Status.FAILED
        assert evaluation.error.startswith(f"{field}: {says}"), evaluation.error
        assert not EvalExample.objects.filter(evaluation=evaluation).exists()  # no prompt text comes back
        assert not MARKER.exists()
