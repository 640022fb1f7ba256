// Runs the Auth0 Action against a running stepgate with a recording
// stand-in for Auth0's `api` object. Usage: STEPGATE_URL=http://... node test.mjs
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { onExecutePostLogin } = require('./stepgate-post-login.js');
const base = process.env.STEPGATE_URL;
assert.ok(base, 'STEPGATE_URL is required');

function recorder() {
  const calls = [];
  return {
    calls,
    api: {
      access: { deny: (reason) => calls.push(['deny', reason]) },
      multifactor: { enable: (provider, options) => calls.push(['mfa', provider, options]) },
      authentication: { challengeWith: (factor) => calls.push(['challenge', factor]) },
    },
  };
}

function event({ user, device, ip = '203.0.113.7', methods = ['pwd'] }) {
  return {
    secrets: { STEPGATE_URL: base },
    user: { user_id: user },
    authentication: { methods: methods.map((name) => ({ name })) },
    request: { ip, user_agent: 'test-agent/1.0', query: device ? { device_id: device } : {} },
  };
}

// Fresh names per run, so the script can run again against the same
// server (whose memory of known devices and failures it would otherwise
// meet).
const run_id = `${Date.now()}-${Math.floor(Math.random() * 1e6)}`;
const ana = `auth0|ana-${run_id}`;
const stuffer = `198.51.${Math.floor(Math.random() * 200) + 1}.66`;

async function run(e) {
  const { calls, api } = recorder();
  await onExecutePostLogin(e, api);
  return calls;
}

// A new device at AAL1: MFA.
let calls = await run(event({ user: ana, device: 'd-1' }));
assert.deepEqual(calls.map((c) => c[0]), ['mfa'], JSON.stringify(calls));

// After MFA the sign-in is decided at AAL2, allowed and reported, so the
// device is known from then on.
calls = await run(event({ user: ana, device: 'd-1', methods: ['pwd', 'mfa'] }));
assert.deepEqual(calls, [], JSON.stringify(calls));
calls = await run(event({ user: ana, device: 'd-1' }));
assert.deepEqual(calls, [], 'a known device needs nothing more');

// Credential stuffing from one address: refused.
for (let i = 0; i < 10; i += 1) {
  const response = await fetch(`${base}/v1/report-outcome`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      journey: 'login',
      subject: { userId: `victim-${i}-${run_id}` },
      network: { ip: stuffer },
      event: 'EVENT_AUTH_FAILED',
    }),
  });
  assert.equal(response.status, 200);
}
calls = await run(event({ user: ana, device: 'd-2', ip: stuffer }));
assert.equal(calls.length, 1, JSON.stringify(calls));
assert.equal(calls[0][0], 'deny');
assert.match(calls[0][1], /many different accounts failed/);

// stepgate unreachable: refused, not let through.
const { calls: down, api } = recorder();
const offline = event({ user: ana, device: 'd-1' });
offline.secrets.STEPGATE_URL = 'http://127.0.0.1:9';
await onExecutePostLogin(offline, api);
assert.equal(down[0][0], 'deny');

console.log('auth0 action: ok');
