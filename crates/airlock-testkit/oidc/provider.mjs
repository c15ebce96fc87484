// A real OpenID Connect provider (the `oidc-provider` library) for Airlock's tests.
//
// Started by `airlock_testkit::oidc::OidcProvider` as `node provider.mjs CONFIG_JSON`, where
// CONFIG_JSON is
//
//   { "port": 0, "issuer": null,
//     "client": { "client_id", "client_secret", "redirect_uris": [..] },
//     "accounts": [ { "sub", "preferred_username", "email", "groups": [..] } ] }
//
// It listens on 127.0.0.1:port (0 picks a free port) and, once ready, prints one JSON line on
// stdout: { "issuer": "http://127.0.0.1:PORT", "port": PORT }. It exits when its stdin closes,
// so a test process that dies does not leave it behind.
//
// Only the library's own development interactions serve the login and consent pages (any
// password is accepted for a configured account). Tests change the accounts while it runs:
//
//   POST   /__test/accounts/{sub}/groups   body: JSON array of strings
//   DELETE /__test/accounts/{sub}           the account is gone: refreshes fail
//
// Deliberate choices, so that tests exercise what Airlock relies on:
// - the ID token carries the scopes' claims (`conformIdTokenClaims: false`), among them
//   `preferred_username` (scope `profile`), `email` (scope `email`) and `groups` (scope `groups`);
// - refresh tokens are issued whenever the client may use the refresh_token grant, and are
//   rotated on every use (the library drops `offline_access` unless the request says
//   `prompt=consent`, which would make every sign-in ask for consent again);
// - PKCE (S256) is required of every client; the device flow is enabled.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';

import Provider from 'oidc-provider';

// Stdout carries the ready line only; the library's notices (console.info) go to stderr.
console.log = console.error;
console.info = console.error;

const config = JSON.parse(process.argv[2] ?? '{}');
const accounts = new Map((config.accounts ?? []).map((account) => [account.sub, { ...account }]));

const server = createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(config.port ?? 0, '127.0.0.1', resolve);
});
const { port } = server.address();
const issuer = config.issuer ?? `http://127.0.0.1:${port}`;

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), use: 'sig', alg: 'RS256' };

const provider = new Provider(issuer, {
  clients: [{
    client_id: config.client.client_id,
    client_secret: config.client.client_secret,
    redirect_uris: config.client.redirect_uris,
    grant_types: [
      'authorization_code',
      'refresh_token',
      'urn:ietf:params:oauth:grant-type:device_code',
    ],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
  claims: {
    openid: ['sub'],
    profile: ['preferred_username'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: true },
    deviceFlow: { enabled: true },
    revocation: { enabled: true },
  },
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  expiresWithSession: async () => false,
  rotateRefreshToken: true,
  async findAccount(_ctx, sub) {
    if (!accounts.has(sub)) {
      return undefined;
    }
    return {
      accountId: sub,
      // Read at each use, so a refresh sees groups changed since the sign-in.
      async claims() {
        const account = accounts.get(sub);
        if (!account) {
          return { sub };
        }
        return {
          sub,
          preferred_username: account.preferred_username,
          email: account.email,
          email_verified: account.email !== undefined,
          groups: account.groups ?? [],
        };
      },
    };
  },
});

const oidc = provider.callback();

function reply(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) {
    chunks.push(chunk);
  }
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

async function testControl(req, res, path) {
  const groups = path.match(/^\/__test\/accounts\/([^/]+)\/groups$/);
  const account = path.match(/^\/__test\/accounts\/([^/]+)$/);
  if (groups && req.method === 'POST') {
    const sub = decodeURIComponent(groups[1]);
    const value = await readJson(req);
    if (!accounts.has(sub)) {
      return reply(res, 404, { error: `no account \`${sub}\`` });
    }
    if (!Array.isArray(value) || !value.every((g) => typeof g === 'string')) {
      return reply(res, 400, { error: 'groups must be an array of strings' });
    }
    accounts.get(sub).groups = value;
    return reply(res, 200, accounts.get(sub));
  }
  if (account && req.method === 'DELETE') {
    const sub = decodeURIComponent(account[1]);
    return reply(res, accounts.delete(sub) ? 200 : 404, {});
  }
  return reply(res, 404, { error: 'no such test route' });
}

server.on('request', (req, res) => {
  const path = new URL(req.url, issuer).pathname;
  if (path.startsWith('/__test/')) {
    testControl(req, res, path).catch((error) => reply(res, 500, { error: String(error) }));
  } else {
    oidc(req, res);
  }
});

process.stdin.on('end', () => process.exit(0));
process.stdin.on('close', () => process.exit(0));
process.stdin.resume();

process.stdout.write(`${JSON.stringify({ issuer, port })}\n`);
