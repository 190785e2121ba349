"""``/studies``: submit, list, inspect and stop studies."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from phasetune.service import studies
from phasetune.service.auth import AUTH_RESPONSES, READ, WRITE
from phasetune.service.db import ID_MAX
from phasetune.service.deps import LauncherDep, SettingsDep, StorageDep
from phasetune.service.schemas import StudyCreate, StudyOut, TrialOut

router = APIRouter(prefix="/studies", tags=["studies"], responses=AUTH_RESPONSES)
NOT_FOUND = {404: {"description": "no phasetune study has this id"}}


@router.post("", status_code=status.HTTP_201_CREATED, responses={409: {"description": "the name is taken"}},
             dependencies=[WRITE])
def create_study(spec: StudyCreate, storage: StorageDep, settings: SettingsDep, launcher: LauncherDep) -> StudyOut:
    """Store the study and start it on Ray. 409 if the name exists; 422 naming the field if the spec is invalid."""
    return studies.create(storage=storage, settings=settings, request=spec, launcher=launcher)


@router.get("", dependencies=[READ])
def list_studies(storage: StorageDep, settings: SettingsDep) -> list[StudyOut]:
    return studies.list_all(storage=storage, settings=settings)


@router.get("/{study_id}", responses=NOT_FOUND, dependencies=[READ])
def get_study(study_id: int, storage: StorageDep, settings: SettingsDep) -> StudyOut:
    """Status, trial counts by state, and the best trial with its params and concrete schedule."""
    return studies.view(storage=storage, settings=settings, study_id=study_id)


@router.get("/{study_id}/trials", responses=NOT_FOUND, dependencies=[READ])
def get_trials(study_id: int, storage: StorageDep, request: Request, response: Response,
               offset: Annotated[int, Query(ge=0, le=ID_MAX, description="the first trial number")] = 0,
               limit: Annotated[int, Query(ge=1, le=studies.MAX_PAGE_SIZE)] = studies.PAGE_SIZE,
               history: Annotated[bool, Query(description="include each trial's per-epoch records")] = True,
               ) -> list[TrialOut]:
    """One page of trials in number order. ``X-Total-Count`` says how many the study has; a ``Link`` header with
    ``rel="next"`` points at the next page while there is one."""
    page, total = studies.trials(storage=storage, study_id=study_id, offset=offset, limit=limit, history=history)
    response.headers["X-Total-Count"] = str(total)
    if offset + limit < total:
        following = request.url.include_query_params(offset=offset + limit, limit=limit)
        response.headers["Link"] = f'<{following}>; rel="next"'
    return page


@router.post("/{study_id}/stop", status_code=status.HTTP_202_ACCEPTED, responses=NOT_FOUND,
             dependencies=[WRITE])
def stop_study(study_id: int, storage: StorageDep, settings: SettingsDep, launcher: LauncherDep) -> StudyOut:
    """Stop the study's trials (they end PRUNED in Optuna); a finished study is left as it is."""
    return studies.stop(storage=storage, settings=settings, study_id=study_id, launcher=launcher)
