/**
 * Test certificates made with the `openssl` command line tool: a CA, a server certificate it
 * signs (subjectAltName DNS:localhost and IP:127.0.0.1, CN localhost), a client certificate it
 * signs (CN = a role name, for `cert` authentication), and a second, unrelated CA.
 *
 *   const pki = await createTestPki({ clientCn: 'cert_user' });
 *   pki.installServerFiles(cluster.dataDir);  // server.crt, server.key, root.crt owned by the server user
 *   ...
 *   pki.remove();
 */
import { chmodSync, chownSync, copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { harnessTmpRoot, pgOsUser, run } from './exec.js';

export interface TestPki {
  dir: string;
  /** The CA that signed the server and client certificates. */
  caCert: string;
  /** A CA that signed neither. */
  otherCaCert: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  /** Mode 0600. */
  clientKey: string;
  /** Copy the server's certificate, key and the CA (for client certificates) into `dataDir`, owned by the server's OS user. */
  installServerFiles(dataDir: string): { ssl_cert_file: string; ssl_key_file: string; ssl_ca_file: string };
  remove(): void;
}

export interface PkiOptions {
  /** Common Name of the client certificate (the role `cert` authentication maps it to). */
  clientCn: string;
  /** subjectAltName of the server certificate (default DNS:localhost,IP:127.0.0.1). */
  serverSan?: string;
}

async function openssl(args: string[], cwd: string): Promise<void> {
  await run(['openssl', ...args], { cwd, what: 'openssl' });
}

/** A CA: key and self-signed certificate. */
async function makeCa(dir: string, name: string, cn: string): Promise<void> {
  await openssl(
    [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-sha256',
      '-days',
      '2',
      '-subj',
      `/CN=${cn}`,
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
      '-keyout',
      `${name}.key`,
      '-out',
      `${name}.crt`,
    ],
    dir,
  );
}

/** A leaf certificate signed by `ca`, with optional extensions in `ext`. */
async function makeLeaf(dir: string, name: string, cn: string, ca: string, ext: string): Promise<void> {
  await openssl(['req', '-new', '-newkey', 'rsa:2048', '-nodes', '-subj', `/CN=${cn}`, '-keyout', `${name}.key`, '-out', `${name}.csr`], dir);
  writeFileSync(path.join(dir, `${name}.ext`), ext);
  await openssl(['x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.crt`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-days', '2', '-sha256', '-extfile', `${name}.ext`, '-out', `${name}.crt`], dir);
  chmodSync(path.join(dir, `${name}.key`), 0o600);
}

export async function createTestPki(opts: PkiOptions): Promise<TestPki> {
  const dir = mkdtempSync(path.join(harnessTmpRoot(), 'walstream-pki-'));
  try {
    await makeCa(dir, 'ca', 'walstream test CA');
    await makeCa(dir, 'other-ca', 'walstream unrelated CA');
    const san = opts.serverSan ?? 'DNS:localhost,IP:127.0.0.1';
    await makeLeaf(dir, 'server', 'localhost', 'ca', `subjectAltName=${san}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n`);
    await makeLeaf(dir, 'client', opts.clientCn, 'ca', 'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n');
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  const f = (name: string): string => path.join(dir, name);
  return {
    dir,
    caCert: f('ca.crt'),
    otherCaCert: f('other-ca.crt'),
    serverCert: f('server.crt'),
    serverKey: f('server.key'),
    clientCert: f('client.crt'),
    clientKey: f('client.key'),
    installServerFiles(dataDir: string) {
      const user = pgOsUser();
      const out = { ssl_cert_file: 'server.crt', ssl_key_file: 'server.key', ssl_ca_file: 'root.crt' };
      for (const [src, dst] of [
        [f('server.crt'), out.ssl_cert_file],
        [f('server.key'), out.ssl_key_file],
        [f('ca.crt'), out.ssl_ca_file],
      ] as const) {
        const target = path.join(dataDir, dst);
        copyFileSync(src, target);
        // The server refuses a key file others can read.
        chmodSync(target, 0o600);
        if (user) chownSync(target, user.uid, user.gid);
      }
      return out;
    },
    remove() {
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
