# Loaded by schemathesis (SCHEMATHESIS_HOOKS, tests/e2e/openapi.test.mjs): the upload
# operations take the video itself as the body (video/mp4, video/quicktime), which
# schemathesis sends as it sends any binary body.
import schemathesis

schemathesis.serializer.alias("video/mp4", "application/octet-stream")
schemathesis.serializer.alias("video/quicktime", "application/octet-stream")
