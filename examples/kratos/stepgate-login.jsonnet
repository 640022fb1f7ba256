// Ory Kratos web hook body for `selfservice.flows.login.after`: a stepgate
// Decide for the sign-in that just passed its factors. Kratos sends it to
// stepgate's /v1/hooks/decide, which answers 200 to let the sign-in through
// and 403 (with a message Kratos shows, and interrupts the flow with) for a
// step-up or a refusal.
function(ctx)
  local headers = if std.objectHas(ctx, 'request_headers') then ctx.request_headers else {};
  // Kratos passes each header as the list of its lines.
  local header(name) = if std.objectHas(headers, name) then headers[name][0] else null;
  local all_lines(name) = if std.objectHas(headers, name) then std.join(',', headers[name]) else null;
  local cookies = if std.objectHas(ctx, 'request_cookies') then ctx.request_cookies else {};
  local session = if std.objectHas(ctx, 'session') && ctx.session != null then ctx.session else {};
  local aal2 = std.objectHas(session, 'authenticator_assurance_level')
               && session.authenticator_assurance_level == 'aal2';
  // Kratos behind one proxy: the client is the entry that proxy appended,
  // the rightmost of all the header's lines; anything to its left was
  // written by the client.
  local forwarded = all_lines('X-Forwarded-For');
  local hops = if forwarded == null then [] else std.split(forwarded, ',');
  local client = if hops == [] then header('X-Real-Ip')
                 else std.stripChars(hops[std.length(hops) - 1], ' ');
  {
    journey: 'login',
    subject: { userId: ctx.identity.id },
    authn: { aal: if aal2 then 2 else 1 },
    network: { ip: client },
    [if std.objectHas(cookies, 'device_id') then 'device']: {
      id: cookies.device_id,
      userAgent: header('User-Agent'),
    },
    requestId: ctx.flow.id,
  }
