-- Argo CD health for a TrainingSweep: Succeeded (and the best model registered) -> Healthy;
-- Failed or any Stalled condition -> Degraded; Pending/Running -> Progressing, with the
-- trials done so far.
local hs = {}
if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end
local phase = obj.status.phase or "Pending"
local ready = nil
local stalled = nil
for _, condition in ipairs(obj.status.conditions) do
  if condition.type == "Ready" then ready = condition end
  if condition.type == "Stalled" then stalled = condition end
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or phase
elseif (stalled ~= nil and stalled.status == "True") or phase == "Failed" then
  hs.status = "Degraded"
  local source = stalled or ready or {}
  hs.message = phase .. ": " .. (source.reason or "Failed") .. ": " .. (source.message or "")
else
  hs.status = "Progressing"
  local source = ready or {}
  hs.message = phase .. ": " .. (source.message or "")
end
return hs
