/**
 * Auth0 post-login Action: ask stepgate whether this sign-in may go on,
 * needs a step-up, or is refused, and report a completed sign-in.
 *
 * Secrets: STEPGATE_URL (stepgate's HTTP listener, e.g.
 * https://stepgate.internal:50052). Optional: a `device_id` authorization
 * parameter your app sends (an unguessable per-device secret it keeps in a
 * cookie); without one every sign-in counts as a new device.
 *
 * STEP_UP asks Auth0 for MFA (a phishing-resistant WebAuthn key when
 * stepgate asks for AAL3). DENY refuses the sign-in. If stepgate cannot be
 * reached in time, the sign-in is refused: fail closed, or change
 * `onUnavailable` below.
 */
const TIMEOUT_MS = 1500;

async function stepgate(base, path, body) {
  const response = await fetch(`${base}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(TIMEOUT_MS),
  });
  const answer = await response.json();
  if (!response.ok) {
    throw new Error(`stepgate ${path}: ${answer.code}: ${answer.message}`);
  }
  return answer;
}

function onUnavailable(api, error) {
  console.log(`stepgate unavailable, refusing: ${error.message}`);
  api.access.deny('Sign-in is temporarily unavailable. Please try again.');
}

exports.onExecutePostLogin = async (event, api) => {
  const base = event.secrets.STEPGATE_URL;
  const methods = (event.authentication && event.authentication.methods) || [];
  const amr = methods.map((m) => m.name);
  // A second factor passed in this transaction: the user holds AAL2.
  const aal = amr.includes('mfa') ? 2 : 1;
  const query = (event.request && event.request.query) || {};
  const deviceId = typeof query.device_id === 'string' && query.device_id ? query.device_id : null;
  const subject = { userId: event.user.user_id };
  const network = { ip: event.request.ip };
  const device = deviceId ? { id: deviceId, userAgent: event.request.user_agent || '' } : undefined;

  let answer;
  try {
    answer = await stepgate(base, '/v1/decide', {
      journey: 'login',
      subject,
      authn: { aal, amr },
      device,
      network,
    });
  } catch (error) {
    onUnavailable(api, error);
    return;
  }

  switch (answer.outcome) {
    case 'OUTCOME_ALLOW':
      // The sign-in completed at the level stepgate asked for: report it,
      // so the device and the place become the user's.
      try {
        await stepgate(base, '/v1/report-outcome', {
          decisionId: answer.decisionId,
          journey: 'login',
          subject,
          device,
          network,
          event: 'EVENT_AUTH_SUCCEEDED',
        });
      } catch (error) {
        console.log(`report not delivered: ${error.message}`);
      }
      return;
    case 'OUTCOME_STEP_UP':
      // Auth0 runs MFA after this Action; the next sign-in from this device
      // carries `mfa` in its methods, is decided at AAL2 and, allowed,
      // reported as completed.
      if (answer.requiredAal >= 3) {
        api.authentication.challengeWith({ type: 'webauthn-roaming' });
      } else {
        api.multifactor.enable('any', { allowRememberBrowser: false });
      }
      return;
    default: {
      const why = (answer.reasons || []).map((r) => r.message).join('; ');
      api.access.deny(why || 'Sign-in refused.');
    }
  }
};
