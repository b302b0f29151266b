// OAuth 2.0 client credentials for the test FHIR server, shaped like Medplum's own:
// ClientApplication resources created through the admin API
// (POST /admin/projects/:projectId/client, answering with the generated secret), a token
// endpoint at /oauth2/token (client_secret_basic, client_secret_post, and private_key_jwt with
// the keys at the ClientApplication's jwksUri), and bearer tokens required on /fhir/R4.
// Test hooks: POST /admin/revoke-tokens revokes every issued token; GET /admin/stats counts.
import crypto from 'node:crypto';

const ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
const SKEW_S = 60;

function json(res, status, body, headers = {}) {
  res.writeHead(status, { 'Content-Type': 'application/json', 'Cache-Control': 'no-store', ...headers });
  res.end(JSON.stringify(body));
}

function sameText(a, b) {
  const x = Buffer.from(String(a));
  const y = Buffer.from(String(b));
  return x.length === y.length && crypto.timingSafeEqual(x, y);
}

function b64urlJson(part) {
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
}

export function createOAuth({ repo, tokenUrl, ttlSeconds, adminToken }) {
  const tokens = new Map(); // access token -> { clientId, expires (ms) }
  const seenJti = new Set();
  const stats = { issued: 0, refusedClients: 0, unauthorized: 0 };

  async function findClient(id) {
    try {
      return await repo.readResource('ClientApplication', id);
    } catch {
      return undefined;
    }
  }

  async function verifyAssertion(assertion) {
    const [h, p, s] = String(assertion).split('.');
    if (!h || !p || !s) return undefined;
    const header = b64urlJson(h);
    const claims = b64urlJson(p);
    const client = await findClient(claims.iss);
    if (!client?.jwksUri || claims.sub !== claims.iss || claims.aud !== tokenUrl) return undefined;
    const now = Date.now() / 1000;
    if (!(claims.exp > now - SKEW_S) || claims.exp > now + 300 + SKEW_S) return undefined;
    if (!claims.jti || seenJti.has(claims.jti)) return undefined;
    const jwks = await (await fetch(client.jwksUri)).json();
    const jwk = (jwks.keys || []).find((k) => !header.kid || k.kid === header.kid);
    if (!jwk) return undefined;
    const key = crypto.createPublicKey({ key: jwk, format: 'jwk' });
    const data = Buffer.from(`${h}.${p}`);
    const signature = Buffer.from(s, 'base64url');
    let ok = false;
    if (header.alg === 'RS384' && key.asymmetricKeyType === 'rsa') {
      ok = crypto.verify('sha384', data, key, signature);
    } else if (header.alg === 'ES384' && key.asymmetricKeyType === 'ec') {
      ok = crypto.verify('sha384', data, { key, dsaEncoding: 'ieee-p1363' }, signature);
    }
    if (!ok) return undefined;
    seenJti.add(claims.jti);
    return client;
  }

  async function authenticate(req, form) {
    const basic = /^Basic\s+(.+)$/i.exec(req.headers.authorization || '');
    if (basic) {
      const [id, secret] = Buffer.from(basic[1], 'base64').toString('utf8').split(':');
      const client = await findClient(decodeURIComponent(id || ''));
      return client && sameText(client.secret, decodeURIComponent(secret || '')) ? client : undefined;
    }
    if (form.get('client_assertion_type') === ASSERTION_TYPE) {
      return verifyAssertion(form.get('client_assertion'));
    }
    const client = await findClient(form.get('client_id') || '');
    return client && sameText(client.secret, form.get('client_secret') || '') ? client : undefined;
  }

  async function token(req, res, text) {
    const form = new URLSearchParams(text);
    if (form.get('grant_type') !== 'client_credentials') {
      json(res, 400, { error: 'unsupported_grant_type' });
      return;
    }
    let client;
    try {
      client = await authenticate(req, form);
    } catch {
      client = undefined;
    }
    if (!client) {
      stats.refusedClients += 1;
      json(res, 401, { error: 'invalid_client', error_description: 'Invalid client' });
      return;
    }
    const value = crypto.randomBytes(32).toString('hex');
    tokens.set(value, { clientId: client.id, expires: Date.now() + ttlSeconds * 1000 });
    stats.issued += 1;
    json(res, 200, {
      access_token: value,
      token_type: 'Bearer',
      expires_in: ttlSeconds,
      scope: form.get('scope') || 'system/*.*',
    });
  }

  function isAdmin(req) {
    return sameText(req.headers.authorization || '', `Bearer ${adminToken}`);
  }

  // Returns true when the request was an OAuth or admin request and has been answered.
  async function handle(req, res, pathname, text) {
    if (req.method === 'POST' && pathname === '/oauth2/token') {
      await token(req, res, text);
      return true;
    }
    if (!pathname.startsWith('/admin/')) return false;
    if (!isAdmin(req)) {
      json(res, 401, { error: 'unauthorized' });
      return true;
    }
    if (req.method === 'POST' && /^\/admin\/projects\/[^/]+\/client$/.test(pathname)) {
      const body = text ? JSON.parse(text) : {};
      const created = await repo.createResource({
        resourceType: 'ClientApplication',
        name: body.name || 'client',
        description: body.description,
        jwksUri: body.jwksUri,
        secret: crypto.randomBytes(32).toString('hex'),
      });
      json(res, 201, created);
    } else if (req.method === 'POST' && pathname === '/admin/revoke-tokens') {
      tokens.clear();
      json(res, 200, { revoked: true });
    } else if (req.method === 'GET' && pathname === '/admin/stats') {
      json(res, 200, stats);
    } else {
      json(res, 404, { error: 'not_found' });
    }
    return true;
  }

  // True when a FHIR request carries a live bearer token; otherwise answers 401.
  function authorize(req, res) {
    const bearer = /^Bearer\s+(.+)$/i.exec(req.headers.authorization || '');
    const entry = bearer && tokens.get(bearer[1]);
    if (entry && entry.expires > Date.now()) return true;
    stats.unauthorized += 1;
    res.writeHead(401, { 'Content-Type': 'application/fhir+json', 'WWW-Authenticate': 'Bearer' });
    res.end(
      JSON.stringify({
        resourceType: 'OperationOutcome',
        issue: [{ severity: 'error', code: 'login', details: { text: 'Unauthorized' } }],
      }),
    );
    return false;
  }

  return { handle, authorize };
}
