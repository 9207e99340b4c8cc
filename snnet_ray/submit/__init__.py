"""Submitting jobs to a Ray cluster: the working-dir upload checked before Ray sees it.

`ray job submit --working-dir .` zips the checkout (less the runtime env's excludes and every
`.gitignore`) and uploads it through the dashboard, which refuses bodies over 100 MiB with an HTTP
413 that names no file. `snnet-ray submit` measures the same upload first and refuses, naming the
largest folders, then runs `ray job submit` unchanged.
"""

from snnet_ray.submit.upload import MAX_UPLOAD_BYTES, UploadPlan, UploadTooLarge, check_upload, plan_upload

__all__ = ["MAX_UPLOAD_BYTES", "UploadPlan", "UploadTooLarge", "check_upload", "plan_upload"]
