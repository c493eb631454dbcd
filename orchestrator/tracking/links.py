"""Deep links into MLflow 3's runs table, and the experiment tags that shape it.

What MLflow 3 (checked on 3.17 in headless Chromium) does with an experiment link:

* ``#/experiments/<id>`` lands on the GenAI *Overview* page (traces): the
  sidebar's workflow toggle defaults to "GenAI" (kept in the browser's
  localStorage), and in 3.17 that toggle, not the ``mlflow.experimentKind``
  tag, picks the landing page.
* ``#/experiments/<id>/runs`` opens the runs table; ``workflowType=machine_learning``
  in the query switches the sidebar to "Model training" for this page load
  without changing the user's saved default.
* The query's search facets sort the table (``orderByKey=metrics.`all_mean```,
  ``orderByAsc=false``) but do not make the column visible: metrics stay behind
  "Columns".
* Visible columns come from a saved view: an experiment tag
  ``mlflow.sharedViewState.<id>`` holding ``{"name", "createdAt", "state"}``,
  ``state`` being the JSON of the search facets and the UI state
  (``selectedColumns`` ...). ``viewStateShareKey=<id>`` opens it, and the UI
  lists it under the experiment header's "Views" menu by its name. (MLflow
  ignores a shared view when the query also carries search facets, so a link
  gives either a view or a sort, not both.) The state's ``columnOrder`` orders
  the columns, but 3.17 applies it on some first visits and not on others;
  without it metric columns are sorted by name (hence the leaderboard's
  numbered metric names, :mod:`alorectl.tracking.board`).
* No server setting picks what the root or an experiment opens: ``alorectl ui``
  opens the deep link in the user's browser (:mod:`alorectl.tracking.browser`),
  and every description starts with it (MLflow renders descriptions as markdown
  on the GenAI overview and above the runs table alike).

:func:`setup_experiment` writes the description, the experiment kind and (when
columns or a sort are given) the saved view :data:`VIEW_ID`;
:func:`experiment_url` builds the link. Both are small on purpose: the sweep's
tracking layer calls them, and ``alorectl ui`` prints the links.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import quote, urlencode

#: The saved view :func:`setup_experiment` writes; the link opens it with ``viewStateShareKey``.
VIEW_ID = "alore"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
NOTE_TAG = "mlflow.note.content"
#: The experiment type the UI's own selector writes for training experiments; MLflow 3 versions
#: whose UI has no workflow toggle pick the runs view from it.
KIND_TAG, KIND_TRAINING = "mlflow.experimentKind", "custom_model_development"


def metric_column(name: str) -> str:
    """The runs table's key of a metric column (also the sort key): ``metrics.`all_mean```."""
    return f"metrics.`{name}`"


def param_column(name: str) -> str:
    return f"params.`{name}`"


def experiment_url(base_url: str, experiment_id: str, *, order_by: str | None = None,
                   ascending: bool = False, view: str | None = None) -> str:
    """The link that opens the experiment's runs table (not MLflow's GenAI overview).

    ``order_by`` (a metric name) sorts the table by that metric, descending unless
    ``ascending``; ``view`` opens a saved view (its own sort and visible columns)
    instead, e.g. :data:`VIEW_ID` after :func:`setup_experiment`.
    """
    return base_url.rstrip("/") + "/" + experiment_fragment(experiment_id, order_by=order_by, ascending=ascending,
                                                            view=view)


def experiment_fragment(experiment_id: str, *, order_by: str | None = None, ascending: bool = False,
                        view: str | None = None) -> str:
    """:func:`experiment_url` without the server: ``#/experiments/<id>/runs?...``, a link that works from any
    page of the same UI (the descriptions MLflow renders as markdown use it)."""
    if order_by and view:
        raise ValueError("give order_by or view, not both: MLflow ignores a view when the link also sorts")
    query: dict[str, str] = {"workflowType": "machine_learning"}
    if view:
        query["viewStateShareKey"] = view
    elif order_by:
        query |= {"orderByKey": metric_column(order_by), "orderByAsc": str(ascending).lower()}
    return f"#/experiments/{quote(str(experiment_id), safe='')}/runs?" + urlencode(query, quote_via=quote)


def setup_experiment(client: Any, experiment_id: str, description: str, *, metrics: Sequence[str] = (),
                     params: Sequence[str] = (), order_by: str | None = None, ascending: bool = False,
                     last: Sequence[str] = ()) -> None:
    """Tag an experiment so that MLflow shows it as a training runs table.

    Sets the description (``mlflow.note.content``, shown above the table, markdown) and
    the experiment kind; with ``metrics``/``params``/``order_by``, also the saved view
    :data:`VIEW_ID` showing those columns in that order (metrics, then params; the
    view's ``columnOrder``, else MLflow sorts metric columns by name), sorted by
    ``order_by`` (a metric, shown first when not in ``metrics``); ``last``: runs-table
    column ids moved after them (e.g. MLflow's ``duration``). Safe to repeat: every
    call rewrites the same tags. ``client`` is an ``mlflow.MlflowClient``.
    """
    client.set_experiment_tag(experiment_id, NOTE_TAG, description)
    client.set_experiment_tag(experiment_id, KIND_TAG, KIND_TRAINING)
    if not (metrics or params or order_by):
        return
    shown = list(dict.fromkeys([*([order_by] if order_by and order_by not in metrics else []), *metrics]))
    columns = [*map(metric_column, shown), *map(param_column, params)]
    state: dict[str, Any] = {"selectedColumns": columns, "columnOrder": [*columns, *last]}
    if order_by:
        state |= {"orderByKey": metric_column(order_by), "orderByAsc": ascending}
    name = f"alore: ranked by {order_by}" if order_by else "alore"
    envelope = {"name": name, "createdAt": int(time.time() * 1000), "state": json.dumps(state)}
    client.set_experiment_tag(experiment_id, VIEW_TAG_PREFIX + VIEW_ID, json.dumps(envelope))


def saved_view(experiment: Any) -> str | None:
    """:data:`VIEW_ID` when the experiment (an ``mlflow.entities.Experiment``) has that view, else None."""
    return VIEW_ID if VIEW_TAG_PREFIX + VIEW_ID in (experiment.tags or {}) else None


def alore_experiments(client: Any, prefix: str = "alore/") -> Iterator[Any]:
    """The store's live experiments whose names start with ``prefix``, by name."""
    token = None
    while True:
        page = client.search_experiments(filter_string=f"name LIKE '{prefix}%'", order_by=["name ASC"],
                                         page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def experiment_links(client: Any, base_url: str) -> list[tuple[str, str]]:
    """(name, deep link) for every ``alore/*`` experiment; the link opens its saved view when it has one."""
    return [(e.name, experiment_url(base_url, e.experiment_id, view=saved_view(e)))
            for e in alore_experiments(client)]
