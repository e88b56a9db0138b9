"""/v1/me: who the API key belongs to, where its files live, and the limits that apply."""

from __future__ import annotations

from fastapi import APIRouter

from service.auth import TenantDep
from service.deps import SettingsDep
from service.inputs import tenant_area
from service.schemas import MePublic, TenantLimits

router = APIRouter(prefix="/me", tags=["me"])


@router.get("", response_model=MePublic)
def get_me(tenant: TenantDep, settings: SettingsDep) -> MePublic:
    """Your tenant id and storage prefix (batches and schedules from a prefix need it)."""
    area = tenant_area(tenant.id)
    storage_uri = f"s3://{settings.s3_bucket}/{area}" if settings.storage_backend == "s3" else None
    return MePublic(
        tenant_id=tenant.id,
        tenant_name=tenant.name,
        storage_prefix=area,
        storage_uri=storage_uri,
        uploads_prefix=f"{area}uploads/",
        limits=TenantLimits(
            max_upload_bytes=settings.max_upload_bytes,
            max_request_json_bytes=settings.max_request_json_bytes,
            max_user_metadata_bytes=settings.max_user_metadata_bytes,
            max_batch_inputs=settings.max_batch_inputs,
            max_input_frames=settings.max_input_frames,
            max_input_pixels=settings.max_input_pixels,
            max_input_seconds=settings.max_input_seconds,
        ),
    )
