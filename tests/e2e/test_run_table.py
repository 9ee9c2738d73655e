"""In a real browser: the runs table searches, filters and sorts through the URL, and a reload (or a shared link)
shows the same view."""
from datetime import timedelta
from urllib.parse import parse_qs, urlparse

import pytest
from django.utils import timezone

from dashboard.models import Membership
from tests.factories import make_dataset, make_member, make_team, make_user, tiny_overrides
from training.models import Run
from training.runs import services

from .conftest import log_in

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def shown(page) -> list[str]:
    return page.eval_on_selector_all("table.runs tbody tr td.col-name > a:first-child", "links => links.map(a => a.textContent)")


def query(page) -> dict[str, list[str]]:
    return parse_qs(urlparse(page.url).query)


def test_the_runs_table_filters_and_sorts_in_the_url(web_server, page, tmp_path, screenshot_path):
    team = make_team("Table team")
    user = make_member(team, role=Membership.Role.MEMBER, user=make_user("tab", password="tab-password"))
    colours, shapes = (make_dataset(team, user, tmp_dir=tmp_path, name=name) for name in ("colours", "shapes"))
    now = timezone.now()
    rows = [("lr 1e-4", colours, "succeeded", 0.92, ["baseline"], 30), ("lr 2e-4", colours, "succeeded", 0.81,
            ["baseline", "lr"], 12), ("lr 5e-4", colours, "failed", 1.40, ["lr"], 3), ("shapes r 8", shapes,
            "succeeded", 0.65, [], 20), ("queued one", colours, "queued", None, [], None)]
    for name, dataset, status, loss, tags, minutes in rows:
        run = services.run_create(team=team, user=user, dataset=dataset, name=name, queue="nobody-consumes-this",
                                  overrides=tiny_overrides("tiny-model"))
        Run.objects.filter(id=run.id).update(
            status=status, best_eval_loss=loss, best_eval_step=40 if loss else None, tags=tags,
            note="the first try" if name == "lr 1e-4" else "",
            started_at=now - timedelta(minutes=minutes + 5) if minutes else None,
            finished_at=now - timedelta(minutes=5) if minutes else None)
    log_in(page, web_server, "tab", "tab-password")
    assert shown(page) == ["queued one", "shapes r 8", "lr 5e-4", "lr 2e-4", "lr 1e-4"]

    page.fill("#filter-q", "lr")
    page.press("#filter-q", "Enter")
    page.wait_for_url("**q=lr**")
    page.select_option("#filter-dataset", label="colours")  # applies at once
    page.wait_for_url(f"**dataset={colours.id}**")  # not "dataset=": the empty one is in the URL already
    page.select_option("#filter-status", "succeeded")
    page.wait_for_url("**status=succeeded**")
    assert shown(page) == ["lr 2e-4", "lr 1e-4"]

    page.click("a.sort[data-sort=eval_loss]")
    page.wait_for_url("**sort=eval_loss**")
    assert shown(page) == ["lr 2e-4", "lr 1e-4"]
    page.click("a.sort[data-sort=eval_loss]")  # the other way
    page.wait_for_url("**sort=-eval_loss**")
    assert shown(page) == ["lr 1e-4", "lr 2e-4"]
    assert query(page) == {"q": ["lr"], "dataset": [str(colours.id)], "status": ["succeeded"], "sort": ["-eval_loss"]}

    # A reload, or the link opened elsewhere, is the same view: rows, inputs and the sorted header.
    url = page.url
    page.reload()
    assert shown(page) == ["lr 1e-4", "lr 2e-4"]
    assert page.input_value("#filter-q") == "lr" and page.input_value("#filter-status") == "succeeded"
    assert page.get_attribute("th:has(a[data-sort=eval_loss])", "aria-sort") == "descending"
    other = page.context.new_page()
    other.goto(url)
    assert shown(other) == ["lr 1e-4", "lr 2e-4"]
    other.close()

    # A tag on a row filters on it, keeping the rest of the view.
    page.click("table.runs tr:has-text('lr 2e-4') a.tag:text('lr')")
    page.wait_for_url("**tag=lr**")
    assert shown(page) == ["lr 2e-4"] and query(page)["sort"] == ["-eval_loss"]
    page.click("#filter-clear")
    page.wait_for_url(f"{web_server.url}/runs/")
    page.click("a.sort[data-sort=duration]")
    page.wait_for_url("**sort=-duration**")
    assert shown(page) == ["lr 1e-4", "shapes r 8", "lr 2e-4", "lr 5e-4", "queued one"]  # never started: last
    page.screenshot(path=str(screenshot_path("run_table.png")), full_page=True)
    assert page.js_errors == []
