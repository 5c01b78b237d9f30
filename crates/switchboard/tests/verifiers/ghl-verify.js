// Verifies one Switchboard delivery with HighLevel's official Node SDK (@gohighlevel/api-client):
// its webhook middleware, configured with Switchboard's Ed25519 public key, on the raw body and
// (as SDK users without a raw-body parser do) on the re-serialized parsed body.
// Input: the raw body on stdin; env GHL_PUBLIC_KEY (PEM), GHL_SIGNATURE, GHL_CLIENT_ID; and, to
// also check the legacy RSA x-wh-signature with the SDK's verifySignature, GHL_RSA_PUBLIC_KEY
// and GHL_WH_SIGNATURE.
// Prints "verified" and exits 0, or prints why and exits 1.
const { WebhookManager, Logger, MemorySessionStorage } = require('@gohighlevel/api-client');

async function main() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const raw = Buffer.concat(chunks);
  const logger = new Logger('error');
  const manager = new WebhookManager(logger, new MemorySessionStorage(logger), {
    getLocationAccessToken: async () => ({}),
  }, { clientId: process.env.GHL_CLIENT_ID, publicKey: process.env.GHL_PUBLIC_KEY });
  const middleware = manager.subscribe();
  const headers = { 'x-ghl-signature': process.env.GHL_SIGNATURE, 'content-type': 'application/json' };
  for (const [name, req] of [
    ['raw body', { method: 'POST', url: '/hook', headers, body: JSON.parse(raw.toString('utf8')), rawBody: raw }],
    ['parsed body', { method: 'POST', url: '/hook', headers, body: JSON.parse(raw.toString('utf8')) }],
  ]) {
    await middleware(req, {}, () => {});
    if (req.isSignatureValid !== true) {
      console.log(`not verified (${name}): isSignatureValid=${req.isSignatureValid} skipped=${req.skippedSignatureVerification}`);
      process.exit(1);
    }
  }
  if (process.env.GHL_WH_SIGNATURE) {
    if (!manager.verifySignature(raw.toString('utf8'), process.env.GHL_WH_SIGNATURE, process.env.GHL_RSA_PUBLIC_KEY)) {
      console.log('not verified (legacy x-wh-signature)');
      process.exit(1);
    }
  }
  console.log('verified');
}

main().catch((e) => { console.log(String(e)); process.exit(1); });
