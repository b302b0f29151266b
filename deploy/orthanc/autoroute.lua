-- noduleflow auto-routing for Orthanc.
--
-- Every CT instance Orthanc receives from a modality is forwarded to the noduleflow receiver
-- (the "noduleflow" entry of DicomModalities). Orthanc's Lua job manager queues each
-- SendToModality and reuses one association per destination until it has been idle for
-- "DicomAssociationCloseDelay" seconds, so a study arrives over few associations.
--
-- Loop guards: noduleflow sends its results (Comprehensive 3D SR, SEG and a key image) back
-- to this Orthanc. They must never be routed to noduleflow again, so the script skips
--   * instances that Lua itself created or modified (RequestOrigin "Lua"),
--   * anything stored by the noduleflow AE (origin RemoteAet),
--   * anything whose Manufacturer is exactly "noduleflow" (what noduleflow writes; the
--     project's synthetic phantoms say "noduleflow-phantom" and are routed like any CT),
--   * SR and SEG whatever their source, and every modality other than CT.

local TARGET = 'noduleflow'            -- key in DicomModalities
local OUR_AET = 'NODULEFLOW'           -- the calling AE title noduleflow sends results with
local OUR_MANUFACTURER = 'noduleflow'  -- Manufacturer (0008,0070) on everything noduleflow writes

local ROUTED_MODALITIES = { CT = true }
local NEVER_ROUTED = { SR = true, SEG = true, KO = true, PR = true }

local function trim(value)
  return (string.gsub(value, '^%s*(.-)%s*$', '%1'))
end

local function lower(value)
  if type(value) ~= 'string' then
    return ''
  end
  return string.lower(value)
end

-- Pure decision, kept apart from the callback so that it reads as a policy.
function NoduleflowShouldRoute(tags, origin)
  if origin['RequestOrigin'] == 'Lua' then
    return false, 'lua-origin'
  end
  if lower(origin['RemoteAet']) == lower(OUR_AET) then
    return false, 'from-noduleflow'
  end
  if trim(lower(tags['Manufacturer'])) == OUR_MANUFACTURER then
    return false, 'noduleflow-manufacturer'
  end
  local modality = tags['Modality'] or ''
  if NEVER_ROUTED[modality] then
    return false, 'result-modality'
  end
  if not ROUTED_MODALITIES[modality] then
    return false, 'not-ct'
  end
  return true, 'ct'
end

function OnStoredInstance(instanceId, tags, metadata, origin)
  local route, reason = NoduleflowShouldRoute(tags, origin)
  if route then
    SendToModality(instanceId, TARGET)
  else
    print('event=autoroute_skip instance=' .. instanceId .. ' reason=' .. reason)
  end
end
