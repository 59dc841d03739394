// Checks of the page's source that need no browser: every JS module parses (as a module),
// no schedule arithmetic is re-implemented in JS (the page shows what the library's `plan` and
// step events say), and www/worker-protocol.md names exactly the messages the code sends and
// handles, and the request fields src/web.rs accepts. Run by scripts/e2e.sh before the browser.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { ROOT } from './harness.mjs';

const WWW = path.join(ROOT, 'www');

/** Every .js file under www/ (not the built dist/). */
function pageScripts(dir = WWW) {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) return e.name === 'assets' ? [] : pageScripts(p);
    return e.name.endsWith('.js') ? [p] : [];
  });
}
const rel = (p) => path.relative(ROOT, p);
const read = (p) => fs.readFileSync(p, 'utf8');

/** Parses `source` as an ES module (from stdin: Node 20's `node --check file.js` lets a module's
 *  syntax errors pass); throws with Node's message on a syntax error. */
const parseModule = (source) =>
  execFileSync(process.execPath, ['--input-type=module', '--check'], { input: source, stdio: ['pipe', 'pipe', 'pipe'] });

test('every page script parses as an ES module', () => {
  assert.throws(() => parseModule('export const x = ;\n'), 'a syntax error is caught');
  const files = pageScripts();
  assert.ok(files.length >= 10, `found ${files.length} scripts`);
  for (const f of files) {
    try {
      parseModule(read(f));
    } catch (e) {
      assert.fail(`${rel(f)} does not parse: ${e.stderr}`);
    }
  }
  assert.ok(!fs.existsSync(path.join(WWW, 'app.js')), 'www/app.js is gone: the page is the modules in www/app/');
});

// What re-implementing src/schedule.rs or the plan's totals in JS looks like.
const SCHEDULE_ARITHMETIC = [
  [/Math\.cos\s*\(/, 'a cosine (the mask schedule or the cosine step schedule)'],
  [/\b(stepsAt|tokensPerStep|nominalSteps|maskLenAfter|parseSchedule|baselineSteps|constantTotals|countTimesteps)\s*\(/, 'a schedule function'],
  [/\b(headCalls|tokenSteps)\s*\+=/, 'summing head calls or token·steps'],
  [/\b(headCalls|tokenSteps)\s*[:=][^;\n]*\.reduce\(/, 'summing head calls or token·steps'],
  [/effective_?[sS]teps\s*\*|\*\s*[\w.]*effective_?[sS]teps\b/, 'tokens × steps products'],
  [/split\(\s*\/:\(\.\*\)\/|split\(\s*\/\[:,\]\//, 'parsing a schedule string'],
];

test('the patterns catch the schedule arithmetic the page used to have', () => {
  // Lines of the former www/app.js and worker.js.
  for (const line of [
    'const ratio = Math.cos(((Math.PI / 2) * (k + 1)) / K);',
    'function stepsAt(s, k, K) {',
    'heatMax: Math.max(...nominalSteps(K, parseSchedule(request.schedule))),',
    'if (event.positions.length > 0) headCalls += event.effectiveSteps;',
    'tokenSteps += event.positions.length * event.effectiveSteps;',
    'const x = s.tokens * s.effective_steps;',
    'headCalls: nominal.reduce((a, b) => a + b, 0),',
    "const [kind, rest = ''] = text.split(/:(.*)/s);",
  ]) {
    assert.ok(SCHEDULE_ARITHMETIC.some(([re]) => re.test(line)), `not caught: ${line}`);
  }
});

test('no schedule arithmetic in the page: it shows the library\'s plan', () => {
  const found = [];
  for (const f of pageScripts()) {
    read(f).split('\n').forEach((line, i) => {
      for (const [re, what] of SCHEDULE_ARITHMETIC) if (re.test(line)) found.push(`${rel(f)}:${i + 1}: ${what}: ${line.trim()}`);
    });
  }
  assert.deepEqual(found, [], found.join('\n'));
});

test('worker-protocol.md names exactly the messages the code sends and handles', () => {
  const doc = read(path.join(WWW, 'worker-protocol.md'));
  const documented = new Set([...doc.matchAll(/\{\s*type\s*:\s*'(\w+)'/g)].map((m) => m[1]));
  const code = new Set();
  for (const f of pageScripts()) {
    const text = read(f);
    for (const m of text.matchAll(/\btype\s*:\s*'(\w+)'/g)) code.add(m[1]);
    for (const m of text.matchAll(/\bcase\s+'(\w+)'\s*:/g)) if (f.endsWith('worker.js')) code.add(m[1]);
  }
  // The page's own event-log entries (window.disaEvents), not messages.
  for (const own of ['launch']) code.delete(own);
  const undocumented = [...code].filter((t) => !documented.has(t));
  const stale = [...documented].filter((t) => !code.has(t));
  assert.deepEqual(undocumented, [], `messages missing from worker-protocol.md: ${undocumented}`);
  assert.deepEqual(stale, [], `worker-protocol.md documents messages the code does not have: ${stale}`);
});

test('worker-protocol.md lists the request fields src/web.rs accepts', () => {
  const doc = read(path.join(WWW, 'worker-protocol.md'));
  const rust = read(path.join(ROOT, 'src/web.rs'));
  const body = rust.match(/struct WebRequest \{([\s\S]*?)\n\}/)[1];
  const fields = [...body.matchAll(/^\s*([a-z_]+):/gm)].map((m) => m[1].replace(/_([a-z])/g, (_, c) => c.toUpperCase()));
  assert.ok(fields.length >= 8, `fields: ${fields}`);
  const section = doc.slice(doc.indexOf('`request`'));
  for (const f of fields) assert.match(section, new RegExp(`\\b${f}\\b`), `worker-protocol.md explains the request field \`${f}\``);
});
