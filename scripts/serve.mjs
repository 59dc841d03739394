// A small static file server for the built page (dist/), bound to 127.0.0.1 only.
// Used by scripts/demo.sh and by the browser end-to-end test.
//   node scripts/serve.mjs [DIR] [PORT]     (PORT 0 picks a free one)

import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';

const MIME = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.mjs': 'text/javascript',
  '.css': 'text/css', '.wasm': 'application/wasm', '.json': 'application/json',
  '.png': 'image/png', '.safetensors': 'application/octet-stream',
};

/** Starts serving `dir` on 127.0.0.1:`port`; resolves to the running server. */
export function serve(dir, port = 0) {
  const root = path.resolve(dir);
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://localhost');
    const file = path.join(root, decodeURIComponent(url.pathname === '/' ? '/index.html' : url.pathname));
    if (!file.startsWith(root) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
      return;
    }
    const body = fs.readFileSync(file);
    res.writeHead(200, {
      'content-type': MIME[path.extname(file)] || 'application/octet-stream',
      'content-length': body.length,
      'cache-control': 'no-cache',
    });
    res.end(body);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve(server));
  });
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const dir = process.argv[2] || 'dist';
  const port = Number(process.argv[3] || 8080);
  if (!fs.existsSync(path.join(dir, 'index.html'))) {
    console.error(`error: ${dir}/index.html not found: build the page first (trunk build --release)`);
    process.exit(1);
  }
  serve(dir, port).then(
    (server) => console.log(`disa demo: http://127.0.0.1:${server.address().port}/  (Ctrl-C stops)`),
    (err) => { console.error(`error: cannot serve on port ${port}: ${err.message}`); process.exit(1); },
  );
}
