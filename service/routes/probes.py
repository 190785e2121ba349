"""``/probes``: the curvature probe (λ0, lr_crit = 2/λ0) and the LR range test (lr_start, lr_best, lr_div)."""

from __future__ import annotations

from fastapi import APIRouter, status

from phasetune.service import probes
from phasetune.service.auth import AUTH_RESPONSES, READ, WRITE
from phasetune.service.deps import EngineDep, LauncherDep, ProbeRunnerDep, SettingsDep
from phasetune.service.schemas import ProbeCreate, ProbeOut

router = APIRouter(prefix="/probes", tags=["probes"], responses=AUTH_RESPONSES)


@router.post("", status_code=status.HTTP_202_ACCEPTED,
             responses={503: {"description": "no Ray cluster is connected to run the probe on (retry shortly)"}},
             dependencies=[WRITE])
def create_probe(request: ProbeCreate, engine: EngineDep, settings: SettingsDep, launcher: LauncherDep,
                 runner: ProbeRunnerDep) -> ProbeOut:
    """Store the probe and start it on Ray; it answers at once with the probe ``running``: ``GET /probes/{id}``
    shows it until it is ``done`` (with its result) or ``failed`` (with its error). 422 naming the field if the
    request is invalid."""
    return probes.create(engine=engine, settings=settings, launcher=launcher, runner=runner, request=request)


@router.get("/{probe_id}", responses={404: {"description": "no probe has this id"}}, dependencies=[READ])
def get_probe(probe_id: int, engine: EngineDep) -> ProbeOut:
    """A stored probe result; 404 if there is none with this id."""
    return probes.view(engine=engine, probe_id=probe_id)
