"""Which exposure earned a click. Every click keeps a status, so nothing is dropped: `attributed` (credited once to
its exposure), `duplicate` (the same item of the same exposure clicked again), `late` (its exposure is older than
the window) or `no_exposure` (no exposure of that item to that user at or before the click).

Exposures have one row per shown item: request_id, user_id, arm, item_id, rank, timestamp (seconds). Clicks have
user_id, item_id, timestamp and optionally request_id. A click naming a known request_id is matched to that request;
any other click to the latest earlier exposure of the same item to the same user.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recsys_core.schema import ITEM_ID, USER_ID

REQUEST_ID = "request_id"
TIMESTAMP = "timestamp"
ARM = "arm"
STATUS = "status"
ATTRIBUTED, DUPLICATE, LATE, NO_EXPOSURE = "attributed", "duplicate", "late", "no_exposure"
EXPOSURE_COLUMNS = (REQUEST_ID, USER_ID, ARM, ITEM_ID, "rank", TIMESTAMP)
CLICK_COLUMNS = (USER_ID, ITEM_ID, TIMESTAMP)


def require_columns(frame: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lack column(s) {missing}; they have {list(frame.columns)}")


def attribute_clicks(exposures: pd.DataFrame, clicks: pd.DataFrame, *, window_s: float = 3600.0) -> pd.DataFrame:
    """The clicks, in their input order, with `exposure_request_id`, `arm`, `exposed_at` and `status` added."""
    require_columns(exposures, EXPOSURE_COLUMNS, "exposures")
    require_columns(clicks, CLICK_COLUMNS, "clicks")
    out = clicks.reset_index(drop=True).copy()
    out["_order"] = np.arange(len(out))
    requests = exposures.drop_duplicates(REQUEST_ID).set_index(REQUEST_ID)
    given = out[REQUEST_ID] if REQUEST_ID in out.columns else pd.Series(None, index=out.index, dtype=object)
    by_request = given.notna() & given.isin(requests.index)
    out["exposure_request_id"] = given.where(by_request)
    out["exposed_at"] = given.map(requests[TIMESTAMP]).where(by_request)

    types = {USER_ID: "int64", ITEM_ID: "int64", TIMESTAMP: "float64"}
    rest = out.loc[~by_request, ["_order", USER_ID, ITEM_ID, TIMESTAMP]].astype(types)
    shown = exposures[[USER_ID, ITEM_ID, TIMESTAMP, REQUEST_ID]].astype(types)
    matched = pd.merge_asof(
        rest.sort_values(TIMESTAMP), shown.rename(columns={TIMESTAMP: "exposed_at"}).sort_values("exposed_at"),
        left_on=TIMESTAMP, right_on="exposed_at", by=[USER_ID, ITEM_ID], direction="backward",
    ).set_index("_order")  # fmt: skip
    rows = out.loc[~by_request, "_order"]
    out.loc[~by_request, "exposure_request_id"] = matched.loc[rows, REQUEST_ID].to_numpy()
    out.loc[~by_request, "exposed_at"] = matched.loc[rows, "exposed_at"].to_numpy()

    out[ARM] = out["exposure_request_id"].map(requests[ARM])
    age = out[TIMESTAMP].astype("float64") - out["exposed_at"].astype("float64")
    status = np.where(out["exposure_request_id"].isna(), NO_EXPOSURE, np.where(age > window_s, LATE, ATTRIBUTED))
    out[STATUS] = status.astype(object)
    credited = out[out[STATUS] == ATTRIBUTED].sort_values([TIMESTAMP, "_order"])
    repeat = credited.duplicated(["exposure_request_id", ITEM_ID])
    out.loc[repeat[repeat].index, STATUS] = DUPLICATE
    return out.drop(columns="_order")


def status_counts(attributed: pd.DataFrame) -> dict[str, int]:
    counts = attributed[STATUS].value_counts()
    return {name: int(counts.get(name, 0)) for name in (ATTRIBUTED, DUPLICATE, LATE, NO_EXPOSURE)}
