"""``/studies``: submit, list, inspect and stop studies."""

from __future__ import annotations

from fastapi import APIRouter, status

from service import studies
from service.deps import EngineDep, SettingsDep, StorageDep
from service.schemas import StudyCreate, StudyOut, TrialOut

router = APIRouter(prefix="/studies", tags=["studies"])


@router.post("", status_code=status.HTTP_201_CREATED)
def create_study(spec: StudyCreate, engine: EngineDep, storage: StorageDep, settings: SettingsDep) -> StudyOut:
    """Store the study and start it on Ray. 409 if the name exists; 422 naming the field if the spec is invalid."""
    return studies.create(engine=engine, storage=storage, settings=settings, spec=spec)


@router.get("")
def list_studies(engine: EngineDep, storage: StorageDep, settings: SettingsDep) -> list[StudyOut]:
    return studies.list_all(engine=engine, storage=storage, settings=settings)


@router.get("/{study_id}")
def get_study(study_id: int, engine: EngineDep, storage: StorageDep, settings: SettingsDep) -> StudyOut:
    """Status, trial counts by state, and the best trial with its params and concrete schedule."""
    return studies.view(engine=engine, storage=storage, settings=settings, study_id=study_id)


@router.get("/{study_id}/trials")
def get_trials(study_id: int, engine: EngineDep, storage: StorageDep) -> list[TrialOut]:
    return studies.trials(engine=engine, storage=storage, study_id=study_id)


@router.post("/{study_id}/stop", status_code=status.HTTP_202_ACCEPTED)
def stop_study(study_id: int, engine: EngineDep, storage: StorageDep, settings: SettingsDep) -> StudyOut:
    """Stop the study's trials (they end PRUNED in Optuna); a finished study is left as it is."""
    return studies.stop(engine=engine, storage=storage, settings=settings, study_id=study_id)
