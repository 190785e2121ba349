"""``/probes``: the curvature probe (λ0, lr_crit = 2/λ0) and the LR range test (lr_start, lr_best, lr_div)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from service import probes
from service.auth import AUTH_RESPONSES, READ, WRITE
from service.deps import EngineDep, LauncherDep, SettingsDep
from service.schemas import ProbeCreate, ProbeOut

router = APIRouter(prefix="/probes", tags=["probes"], responses=AUTH_RESPONSES)


@router.post("", status_code=status.HTTP_201_CREATED,
             responses={503: {"description": "no Ray cluster is connected, or it could not run the probe"},
                        504: {"description": "the probe did not finish in time"}},
             dependencies=[WRITE])
def create_probe(request: ProbeCreate, engine: EngineDep, settings: SettingsDep, launcher: LauncherDep) -> ProbeOut:
    """Run the probe on Ray (waits for it) and store the result. 422 naming the field if the request is invalid."""
    return probes.create(engine=engine, settings=settings, launcher=launcher, request=request)


@router.get("/{probe_id}", responses={404: {"description": "no probe has this id"}}, dependencies=[READ])
def get_probe(probe_id: int, engine: EngineDep) -> ProbeOut:
    """A stored probe result; 404 if there is none with this id."""
    try:
        return probes.view(engine=engine, probe_id=probe_id)
    except probes.ProbeNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no probe with id {probe_id}") from None
