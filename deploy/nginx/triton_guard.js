// njs (nginx JavaScript) guard in front of Triton 2.51's HTTP endpoint.
//
// Triton 2.51's HTTP front end is aborted by single requests before any model code runs
// (benchmarks/results/reliability.md): a JSON tensor whose "shape" claims ~2^56 elements
// (std::bad_alloc) and JSON nested ~100000 levels deep (stack overflow). nginx limits the body
// size itself (client_max_body_size: 413); this check, run on the body nginx received whole
// into a file, refuses before anything reaches Triton:
//   - JSON nested deeper than MAX_DEPTH (the inference JSON needs 4 levels, 7 with the data of
//     [n, 1, 256, 256] as nested arrays), or with more than MAX_STRUCTURE brackets and quotes;
//   - an input or output whose shape is not a list of non-negative integers, or whose element
//     count exceeds MAX_ELEMENTS (a batch of 8 images of 1 x 256 x 256 is 524288);
//   - a JSON body above MAX_JSON (413), a binary request's JSON header above MAX_HEADER.
// With the binary tensor protocol only the JSON header (Inference-Header-Content-Length bytes)
// is scanned. A request that passes goes on unchanged (internal redirect to @triton).

import fs from 'fs';

const MAX_DEPTH = 16;
// the JSON of a request: a whole JSON body (a batch of 8 images as JSON floats is ~6 MB), or the
// header of a binary request (a few hundred bytes)
const MAX_JSON = 8 * 1024 * 1024;
const MAX_HEADER = 64 * 1024;
const MAX_ELEMENTS = 8 * 1 * 256 * 256;
// brackets and quotes in one request: a batch of 8 images as nested JSON arrays needs ~8300
const MAX_STRUCTURE = 65536;

function deeperThan(text, limit) {
    // The bracket skeleton first, with native regular expressions (a 7-MB JSON tensor of floats
    // reduces to a few characters): escape pairs go (inside a string they never end it and are
    // never structure; "\u005b" included), then everything but brackets and quotes. What is left
    // alternates between structure and strings that hold no quote.
    const skeleton = text.replace(/\\[\s\S]/g, '').replace(/[^\[\]{}"]+/g, '');
    if (skeleton.length > MAX_STRUCTURE) {
        return true; // no inference request has that much structure; scanning it costs the proxy
    }
    let depth = 0;
    let inString = false;
    for (let i = 0; i < skeleton.length; i++) {
        const c = skeleton.charCodeAt(i);
        if (c === 34) { // quote
            inString = !inString;
        } else if (inString) {
            continue;
        } else if (c === 91 || c === 123) { // [ {
            depth++;
            if (depth > limit) {
                return true;
            }
        } else { // ] }
            depth--;
        }
    }
    return false;
}

function shapeProblem(tensors, what) {
    if (tensors === undefined) {
        return null;
    }
    if (!Array.isArray(tensors)) {
        return `"${what}" is not a list`;
    }
    for (let k = 0; k < tensors.length; k++) {
        const t = tensors[k];
        if (t === null || typeof t !== 'object' || t.shape === undefined) {
            continue; // outputs need no shape; Triton reports what else is missing
        }
        if (!Array.isArray(t.shape) || t.shape.length > 8) {
            return `${what}[${k}].shape is not a list of at most 8 dimensions`;
        }
        let n = 1;
        for (let d = 0; d < t.shape.length; d++) {
            const v = t.shape[d];
            if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) {
                return `${what}[${k}].shape holds ${JSON.stringify(v)}, not a non-negative integer`;
            }
            n *= v;
        }
        if (n > MAX_ELEMENTS) {
            return `${what}[${k}].shape ${JSON.stringify(t.shape)} claims ${n} elements, above ${MAX_ELEMENTS}`;
        }
    }
    return null;
}

function refuse(r, status, message) {
    r.headersOut['Content-Type'] = 'application/json';
    r.return(status, JSON.stringify({ error: `refused by the proxy: ${message}` }) + '\n');
}

// The JSON of a request, read from the file nginx received its body into (client_body_in_file_only):
// the first Inference-Header-Content-Length bytes of a binary request (at most MAX_HEADER), else
// the whole body (at most MAX_JSON). Returns {text} or {status, message}.
function requestJson(r) {
    const path = r.variables.request_body_file;
    if (!path) {
        return { text: '' }; // no body: Triton answers that itself
    }
    const fd = fs.openSync(path, 'r');
    try {
        const size = fs.fstatSync(fd).size;
        let n = size;
        const headerLength = r.headersIn['Inference-Header-Content-Length'];
        if (headerLength !== undefined) {
            n = Number(headerLength);
            if (!Number.isInteger(n) || n < 0 || n > size) {
                return { status: 400, message: 'Inference-Header-Content-Length is not a length within the body' };
            }
            if (n > MAX_HEADER) {
                return { status: 400, message: `a JSON header of ${n} bytes, above ${MAX_HEADER}` };
            }
        } else if (size > MAX_JSON) {
            return {
                status: 413,
                message: `a JSON body of ${size} bytes, above ${MAX_JSON}: send large files with the binary tensor extension`,
            };
        }
        const buffer = Buffer.alloc(n);
        fs.readSync(fd, buffer, 0, n, 0);
        return { text: buffer.toString() };
    } finally {
        fs.closeSync(fd);
    }
}

function check(r) {
    const json = requestJson(r);
    if (json.status !== undefined) {
        refuse(r, json.status, json.message);
        return;
    }
    const text = json.text;
    if (text === '') {
        r.internalRedirect('@triton');
        return;
    }
    if (deeperThan(text, MAX_DEPTH)) {
        refuse(r, 400, `JSON nested deeper than ${MAX_DEPTH} levels or with more than ${MAX_STRUCTURE} brackets`);
        return;
    }
    let request;
    try {
        request = JSON.parse(text);
    } catch (e) {
        refuse(r, 400, 'the request is not valid JSON');
        return;
    }
    if (request === null || typeof request !== 'object' || Array.isArray(request)) {
        refuse(r, 400, 'the request is not a JSON object');
        return;
    }
    const problem = shapeProblem(request.inputs, 'inputs');
    if (problem !== null) {
        refuse(r, 400, problem);
        return;
    }
    r.internalRedirect('@triton');
}

export default { check };
