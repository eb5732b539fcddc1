/** A multipart/form-data request body: text fields, then each buffer as an `image` part (p0.jpg, p1.jpg, ...). */
export function multipart(
  files: Buffer[],
  fields: Record<string, string> = {},
): { body: Buffer; type: string } {
  const boundary = '----clipcapTestBoundary42';
  const chunks: Buffer[] = [];
  for (const [k, v] of Object.entries(fields))
    chunks.push(Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${k}"\r\n\r\n${v}\r\n`));
  files.forEach((f, i) => {
    chunks.push(
      Buffer.from(
        `--${boundary}\r\nContent-Disposition: form-data; name="image"; filename="p${i}.jpg"\r\n` +
          `Content-Type: image/jpeg\r\n\r\n`,
      ),
      f,
      Buffer.from('\r\n'),
    );
  });
  chunks.push(Buffer.from(`--${boundary}--\r\n`));
  return { body: Buffer.concat(chunks), type: `multipart/form-data; boundary=${boundary}` };
}
