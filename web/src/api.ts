// POST /api/connection-details: a room of our own and a token to join it (docs/web.md).

export interface ConnectionDetails {
  serverUrl: string;
  roomName: string;
  participantName: string;
  participantToken: string;
}

export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
  ) {
    super(message);
  }
}

const KEY_STORAGE = 'voicecore-key'; // this tab only: closing it forgets the key

export function storedKey(): string | null {
  try {
    return sessionStorage.getItem(KEY_STORAGE);
  } catch {
    return null;
  }
}

export function storeKey(key: string | null): void {
  try {
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  } catch {
    // storage disabled: the key is asked for again next time
  }
}

export async function fetchConnectionDetails(): Promise<ConnectionDetails> {
  const headers: Record<string, string> = { 'Content-Type': 'application/json' };
  const key = storedKey();
  if (key) headers['X-Voicecore-Key'] = key;
  let response: Response;
  try {
    response = await fetch('/api/connection-details', {
      method: 'POST',
      headers,
      body: '{}',
      cache: 'no-store',
      credentials: 'same-origin',
    });
  } catch {
    throw new ApiError('The voicecore server did not answer. Is it still running?', 0);
  }
  const body = (await response.json().catch(() => ({}))) as Partial<ConnectionDetails> & { error?: string };
  if (!response.ok) {
    throw new ApiError(body.error ?? `The server answered HTTP ${response.status}.`, response.status);
  }
  return body as ConnectionDetails;
}
