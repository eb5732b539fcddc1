/**
 * The tokenization pycocoevalcap applies before scoring (tokenizer/ptbtokenizer.py): Stanford CoreNLP
 * 3.4.1's `PTBTokenizer -preserveLines -lowerCase` over all captions of one side ('\n'-joined, references
 * in one call and candidates in another), then removal of its punctuation list.
 *
 * This is an independent TypeScript re-implementation of the behaviour of that lexer (a JFlex scanner:
 * at each position the rule with the longest match wins, counting trailing context; ties go to the rule
 * listed first), with the options that command line gives: the historical PTB3 escaping defaults of 3.4.1
 * (brackets -> -LRB- etc., quotes -> `` '' ` ', dashes -> --, ellipses -> ..., currency symbols -> $ # cents,
 * fraction characters -> 1/2) plus `tokenizeNLs`; in 3.4.1 `americanize` and the escaping of / and * are
 * OFF by default. Notable consequences for captions:
 *   - clitics split: "man's" -> man 's, "don't" -> do n't, "can't" -> ca n't, "cannot" -> can not,
 *     "gonna" -> gon na, "'twas" -> 't was; "o'clock", "rock 'n' roll" stay whole ('n' is a token);
 *   - hyphenated words ("black-and-white"), slashed words ("and/or", "km/h"), numbers ("1,000", "3.5",
 *     "3:30"), dates, fractions ("1 1/2" becomes ONE token with a no-break space) stay whole;
 *   - "$5" -> $ 5, "10%" -> 10 %, "€5" -> $ 5, "£5" -> # 5;
 *   - abbreviations and acronyms keep their period ("st.", "mr.", "u.s.", "a.m.", any single letter
 *     followed by a period such as "b."), except before certain capitalised words / at the end of text,
 *     where the period is also returned as its own token (then removed);
 *   - brackets become -lrb- -rrb- -lsb- -rsb- -lcb- -rcb- and SURVIVE the punctuation filter, because the
 *     filter lists the upper-case forms but the tokens are already lower-cased (a toolkit quirk);
 *   - "!!", "?!", "-----", "„" and similar tokens are not in the filter list and survive;
 *   - characters outside the Basic Multilingual Plane (emoji) and other unknown characters are deleted.
 * The expected outputs in test/eval/ptb_oracle_cases.json were produced by the real CoreNLP 3.4.1
 * PTBTokenizer; the tests compare this implementation with them.
 *
 * Known approximations: character classes use this JS engine's Unicode tables (\p{L}, \p{Nd},
 * \p{Uppercase}) where CoreNLP used those of the JDK that generated its scanner; SGML tags with quoted '>'
 * inside attribute values take the first match rather than the longest. Line terminators other than '\n'
 * inside a caption (\r, \v, \f, U+2028, U+2029) are treated as spaces: in pycocoevalcap they would end the
 * line and misalign every later caption with its image.
 */
import { pyRstrip } from './pyutil.js';

// ---------------------------------------------------------------------------------------------------------
// Character classes (BMP code units only: the scanner reads UTF-16 code units, so an astral character is
// two unknown units and is deleted).

/** A regex character-class body listing the BMP code units for which `test` holds, as \uXXXX ranges. */
function bmpClass(test: (ch: string) => boolean): string {
  const hex = (c: number): string => '\\u' + c.toString(16).padStart(4, '0');
  let out = '';
  let start = -1;
  for (let c = 0; c <= 0x10000; c++) {
    const inside = c < 0x10000 && (c < 0xd800 || c > 0xdfff) && test(String.fromCharCode(c));
    if (inside && start < 0) start = c;
    if (!inside && start >= 0) {
      out += c - 1 === start ? hex(start) : `${hex(start)}-${hex(c - 1)}`;
      start = -1;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Token normalisations (the lexer's actions with the 3.4.1 command-line defaults).

const NL = '*NL*';

function removeSoftHyphens(s: string): string {
  if (!s.includes('\u00AD')) return s;
  const out = s.replace(/\u00AD/g, '');
  return out.length === 0 ? '-' : out;
}

/** latexQuotes(tok, probablyLeft): ASCII quotes by position guess, curly / CP1252 ones by their shape. */
function latexQuotes(s: string, probablyLeft: boolean): string {
  let r = probablyLeft
    ? s.replace(/&apos;|'/g, '`').replace(/"|&quot;/g, '``')
    : s.replace(/&apos;|'/g, "'").replace(/"|&quot;/g, "''");
  r = r.replace(/[\u0091\u2018\u201B\u2039]/g, '`');
  r = r.replace(/[\u0092\u2019\u203A]/g, "'");
  r = r.replace(/[\u0093\u201C\u00AB]/g, '``');
  r = r.replace(/[\u0094\u201D\u00BB]/g, "''");
  return r;
}

const normalizeAmp = (s: string): string => s.replace(/&amp;/gi, '&');

function normalizeCurrency(s: string): string {
  return s
    .replace(/\u00A2/g, 'cents')
    .replace(/\u00A3/g, '#')
    .replace(/[\u0080\u00A4\u20A0\u20AC]/g, '$');
}

const FRACTION_CHARS: Record<string, string> = {
  '\u00BC': '1/4',
  '\u00BD': '1/2',
  '\u00BE': '3/4',
  '\u2153': '1/3',
  '\u2154': '2/3',
};

const parens = (s: string): string => s.replace(/\(/g, '-LRB-').replace(/\)/g, '-RRB-');

// ---------------------------------------------------------------------------------------------------------
// Rules, in the specification's order (the order breaks ties between equally long matches).

/** What a rule does with its match: emit `token` (if any) and consume `consume` code units. */
interface Action {
  token?: string;
  consume: number;
}

interface Rule {
  name: string;
  /** Sticky regexes (alternatives); the rule's match is the longest. Group 1, when present, is the token
   *  text and the rest of the match is trailing context (counted for the longest-match choice only). */
  res: RegExp[];
  /** Which code units a match can start with (a cheap pre-filter). */
  first: RegExp;
  /** For patterns where backtracking may stop short of the longest match: the whole pattern anchored, and
   *  the characters a match can contain (every longer end within that run is tried). */
  exactLongest?: { anchored: RegExp; alphabet: RegExp };
  act: (text: string) => Action;
}

const emit = (token: string, consume: number): Action => ({ token, consume });
const same = (t: string): Action => emit(t, t.length);

function rule(
  name: string,
  patterns: string | string[],
  first: string,
  act: (text: string) => Action = same,
  alphabet?: string,
): Rule {
  const list = Array.isArray(patterns) ? patterns : [patterns];
  return {
    name,
    res: list.map((p) => new RegExp(p, 'y')),
    first: new RegExp(`^[${first}]`),
    exactLongest:
      alphabet === undefined
        ? undefined
        : { anchored: new RegExp(`^(?:${list.join('|')})$`), alphabet: new RegExp(`[${alphabet}]*`, 'y') },
    act,
  };
}

/**
 * The lexer rules. Built on first use: the Unicode classes and ~80 large regexes cost ~0.2 s, which
 * importing the library should not pay.
 */
function buildRules(): Rule[] {
  const RE_L = /^\p{L}$/u;
  const RE_ND = /^\p{Nd}$/u;
  const RE_UP = /^\p{Uppercase}$/u;
  /** JFlex [:letter:] (Java Character.isLetter). */
  const CL = bmpClass((ch) => RE_L.test(ch));
  /** JFlex [:digit:] (Java Character.isDigit). */
  const CD = bmpClass((ch) => RE_ND.test(ch));
  /** JFlex [:uppercase:] (Java Character.isUpperCase). */
  const CU = bmpClass((ch) => RE_UP.test(ch));

  /** A literal matched case-insensitively (the scanner is %caseless; character classes are not). */
  function ci(lit: string): string {
    let out = '';
    for (const ch of lit) {
      const lo = ch.toLowerCase();
      const up = ch.toUpperCase();
      out += lo !== up ? `[${lo}${up}]` : ch.replace(/[.*+?^${}()|[\]\\/-]/g, '\\$&');
    }
    return out;
  }

  const alt = (...xs: string[]): string => `(?:${xs.join('|')})`;

  // Macros of the lexer specification, in JS regex syntax (no `u` flag: code units).
  const SGML =
    `<(?:[!?][A-Za-z\\-][^>\\r\\n]*|[A-Za-z][A-Za-z0-9_:.\\-]*(?:[ ]+(?:[A-Za-z][A-Za-z0-9_:.\\-]*[ ]*=[ ]*(?:'[^']*'|"[^"]*")` +
    `|[A-Za-z][A-Za-z0-9_:.\\-]*))*[ ]*\\/?|\\/[A-Za-z][A-Za-z0-9_:.\\-]*)[ ]*>`;
  const SPACE = '[ \\t\\u00A0\\u2000-\\u200A\\u3000]';
  const NEWLINE = '(?:\\r\\n|[\\r\\n\\u2028\\u2029\\u000B\\u000C\\u0085])';
  const SPACENL = alt(SPACE, NEWLINE);
  const SPACENLS = `${SPACENL}+`;
  const SENTEND = `${SPACENL}${alt(SPACENL, `[${CU}]`, SGML)}`;
  const DIGIT = `[${CD}\\u07C0-\\u07C9]`;
  const DATE = `${DIGIT}{1,2}[\\-\\/]${DIGIT}{1,2}[\\-\\/]${DIGIT}{2,4}`;
  const NUMSEP = '[.:,\\u00AD\\u066B\\u066C]';
  const NUMBER = `[\\-+]?(?:${DIGIT}+(?:${NUMSEP}${DIGIT}+)*|(?:${NUMSEP}${DIGIT}+)+)`;
  const SUBSUPNUM =
    '[\\u207A\\u207B\\u208A\\u208B]?(?:[\\u2070\\u00B9\\u00B2\\u00B3\\u2074-\\u2079]+|[\\u2080-\\u2089]+)';
  const FRAC = `(?:${DIGIT}{1,4}[- \\u00A0])?${DIGIT}{1,4}(?:\\\\?\\/|\\u2044)${DIGIT}{1,4}`;
  const FRAC2 = '[\\u00BC\\u00BD\\u00BE\\u2153-\\u215E]';
  const DOLSIGN = '(?:[A-Z]*\\$|#)';
  const DOLSIGN2 =
    '[\\u00A2\\u00A3\\u00A4\\u00A5\\u0080\\u20A0\\u20AC\\u060B\\u0E3F\\u20A4\\uFFE0\\uFFE1\\uFFE5\\uFFE6]';
  /** Extra code units the specification counts as letters (combining marks and ranges its JDK lacked). */
  const LETTER_EXTRA =
    '\\u00AD\\u0237-\\u024F\\u02C2-\\u02C5\\u02D2-\\u02DF\\u02E5-\\u02FF\\u0300-\\u036F\\u0370-\\u037D\\u0384\\u0385' +
    '\\u03CF\\u03F6\\u03FC-\\u03FF\\u0483-\\u0487\\u04CF\\u04F6-\\u04FF\\u0510-\\u0525\\u055A-\\u055F\\u0591-\\u05BD' +
    '\\u05BF\\u05C1\\u05C2\\u05C4\\u05C5\\u05C7\\u0615-\\u061A\\u063B-\\u063F\\u064B-\\u065E\\u0670\\u06D6-\\u06EF' +
    '\\u06FA-\\u06FF\\u070F\\u0711\\u0730-\\u074F\\u0750-\\u077F\\u07A6-\\u07B1\\u07CA-\\u07F5\\u07FA\\u0900-\\u0903' +
    '\\u093C\\u093E-\\u094E\\u0951-\\u0955\\u0962-\\u0963\\u0981-\\u0983\\u09BC-\\u09C4\\u09C7\\u09C8\\u09CB-\\u09CD' +
    '\\u09D7\\u09E2\\u09E3\\u0A01-\\u0A03\\u0A3C\\u0A3E-\\u0A4F\\u0A81-\\u0A83\\u0ABC-\\u0ACF\\u0B82\\u0BBE-\\u0BC2' +
    '\\u0BC6-\\u0BC8\\u0BCA-\\u0BCD\\u0C01-\\u0C03\\u0C3E-\\u0C56\\u0D3E-\\u0D44\\u0D46-\\u0D48\\u0E30-\\u0E3A' +
    '\\u0E47-\\u0E4E\\u0EB1-\\u0EBC\\u0EC8-\\u0ECD';
  const SPLET = `&[aeiouAEIOU]${alt(ci('acute'), ci('grave'), ci('uml'))};`;
  const LETTER = alt(`[${CL}${LETTER_EXTRA}]`, SPLET);
  const LETTER_OR_DIGIT = alt(`[${CL}${LETTER_EXTRA}]`, SPLET, DIGIT);
  const WORD = `${LETTER}${LETTER_OR_DIGIT}*(?:[.!?]${LETTER}${LETTER_OR_DIGIT}*)*`;
  const FILENAME_EXT = alt(
    ...'bat|bmp|c|class|cgi|cpp|dll|doc|docx|exe|gif|gz|h|htm|html|jar|java|jpeg|jpg|mov|mp3|pdf|php|pl|png|ppt|ps|py|sql|tar|txt|wav|x|xml|zip'
      .split('|')
      .map(ci),
  );
  const FILENAME = `${LETTER_OR_DIGIT}+(?:[.]${LETTER_OR_DIGIT}+)*(?:[.]${FILENAME_EXT})`;
  const APOS = alt(`['\\u0092\\u2019]`, ci('&apos;'));
  const APOSETC = alt(APOS, '[`\\u0091\\u2018\\u201B]');
  const HYPHEN = '[-_\\u058A\\u2010\\u2011]';
  const LD = `[${CL}${CD}]`; // [:letter:]|[:digit:]
  const THING_PART = `(?:[dDoOlL]${APOSETC}${LD})?${LD}+`;
  const THING = `${THING_PART}(?:${HYPHEN}${THING_PART})*`;
  const THINGA = `[A-Z]+(?:(?:[+&]|${ci('&amp;')})[A-Z]+)+`;
  const THING3 = '[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\\\?\\/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}';
  // ACRO's special forms come first so that backtracking prefers them (they are always the longer match).
  const ACRO_SPECIAL = alt(
    `${alt(...['Canada', 'Sino', 'Korean', 'EU', 'Japan', 'non'].map(ci))}-${ci('U.S')}`,
    `${ci('U.S.-')}${alt(ci('U.K'), ci('U.S.S.R'))}`,
  );
  const ACRO = alt(ACRO_SPECIAL, '[A-Za-z](?:\\.[A-Za-z])*');
  const ACRO2 = alt(ACRO_SPECIAL, '[A-Za-z](?:\\.[A-Za-z])+');
  const HTHING = `[A-Za-z0-9][A-Za-z0-9.,\\u00AD]*(?:-(?:${ACRO2}\\.|[A-Za-z0-9\\u00AD]+))+`;
  const HTHING_CHARS = 'A-Za-z0-9.,\\u00AD\\-;:\\u3001';
  const REDAUX = `${APOS}${alt('[msdMSD]', ci('re'), ci('ve'), ci('ll'))}`;
  const SWORD = '[A-Za-z\\u00AD]*[A-MO-Za-mo-z]\\u00AD*';
  const SREDAUX = `[nN]${APOSETC}[tT]`;
  /** The specification's character classes stay case-sensitive; only literals are caseless. */
  const APOWORD_ALTS = [
    `${APOS}[nN]${APOS}?`,
    `[lLdDjJ]${APOS}`,
    `${ci('Dunkin')}${APOS}`,
    `${ci('somethin')}${APOS}`,
    `${ci('ol')}${APOS}`,
    `${APOS}${ci('em')}`,
    `[A-HJ-XZn]${APOSETC}[${CL}]{2}[${CL}]*`,
    `${APOS}[2-9]0[sS]`,
    `${APOS}${ci('til')}[lL]?`,
    `[${CL}][${CL}]*[aeiouyAEIOUY]${APOSETC}[aeiouA-Z][${CL}]*`,
    `${APOS}${ci('cause')}`,
    `${ci("cont'd")}\\.?`,
    ...["'twas", "nor'easter", "c'mon", "e'er", "s'mores", "ev'ry", "li'l", "nat'l"].map(ci),
    `[oO]${APOSETC}[oO]`,
  ];
  const FULLURL = `${ci('http')}[sS]?:\\/\\/[^ \\t\\n\\f\\r"<>|(){}]+[^ \\t\\n\\f\\r"<>|.!?(){},-]`;
  const URLPATH = '(?:\\/[^ \\t\\n\\f\\r"<>|()]+[^ \\t\\n\\f\\r"<>|.!?(){},-])?';
  // Note: ",-_" inside the second class is a character RANGE (U+002C..U+005F), as in the specification.
  const LIKELYURL_ALTS = [
    `${ci('www')}\\.(?:[^ \\t\\n\\f\\r"<>|.!?(){},]+\\.)+[a-zA-Z]{2,4}${URLPATH}`,
    `(?:[^ \\t\\n\\f\\r"\`'<>|.!?(){},-_$]+\\.)+${alt(ci('com'), ci('net'), ci('org'), ci('edu'))}${URLPATH}`,
  ];
  const EMAIL =
    `(?:${ci('&lt;')}|<)?[a-zA-Z0-9][^ \\t\\n\\f\\r"<>|()\\u00A0{}]*@(?:[^ \\t\\n\\f\\r"<>|(){}.\\u00A0]+\\.)*` +
    `[^ \\t\\n\\f\\r"<>|(){}.\\u00A0]+(?:${ci('&gt;')}|>)?`;
  const TWITTER = alt('@[a-zA-Z_][a-zA-Z_0-9]*', `#${LETTER}+`);
  const ABMONTH = 'Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec'.split('|').map(ci);
  const ABDAYS = 'Mon|Tue|Tues|Wed|Thu|Thurs|Fri'.split('|').map(ci);
  // [X] marks a first letter that must be upper case (a character class in the specification).
  const caseSensitiveFirst = (w: string): string => (w.startsWith('!') ? w[1] + ci(w.slice(2)) : ci(w));
  const ABSTATE = [
    'Ala', 'Ariz', '!Az', '!Ark', 'Calif', 'Colo', 'Conn', 'Ct', 'Dak', '!Del', 'Fla', 'Ga', '!Ill', 'Ind', 'Kan', 'Kans',
    'Ky', '!La', '!Mass', 'Md', 'Mich', 'Minn', '!Miss', 'Mo', 'Mont', 'Neb', 'Nev', 'Okla', '!Ore', '!Pa', 'Penn',
    'Tenn', '!Tex', 'Va', 'Vt', '!Wash', 'Wis', 'Wisc', 'Wyo',
  ].map(caseSensitiveFirst); // prettier-ignore
  const ABCOMP = [
    ...'Inc|Co|Cos|Corp|Ltd|Plc|Rt|Bancorp|Bhd|Assn|Univ|Intl|Sys'.split('|').map(ci),
    `[pP][pP]?[tT][ye][sS]?`,
  ];
  const ABNUM = 'tel|est|ext|sq'.split('|').map(ci);
  const ABPTIT = [...'Jr|Sr|Bros|Blvd|Rd|Esq'.split('|').map(ci), `${alt(ci('Ed'), ci('Ph'))}\\.[dD]`];
  const ABBREV1 = `${alt(...ABMONTH, ...ABDAYS, ...ABSTATE, ...ABCOMP, ...ABNUM, ...ABPTIT, ci('etc'), ci('al'), ci('seq'), ci('Bldg'))}\\.`;
  const ABTITLE = [
    'Mr', 'Mrs', 'Ms', '!Miss', 'Dr', 'Drs', 'Prof', 'Profs', 'Sen', 'Sens', 'Rep', 'Reps', 'Atty', 'Attys', 'Lt', 'Col',
    'Gen', 'Messrs', 'Gov', 'Govs', 'Adm', 'Rev', 'Maj', 'Sgt', 'Cpl', 'Pvt', 'Capt', 'St', 'Ste', 'Ave', 'Pres', 'Lieut',
    'Hon', 'Brig', 'Cmdr', 'Comdr', 'Pfc', 'Spc', 'Supt', 'Supts', 'Det', 'Mt', 'Ft', 'Adj', 'Adv', 'Asst', 'Assoc',
    'Ens', 'Insp', 'Mlle', 'Mme', 'Msgr', 'Sfc',
  ].map(caseSensitiveFirst); // prettier-ignore
  const ABCOMP2 = [...'Invt|Elec|Natl|Dept'.split('|').map(ci), `[mM][ft][gG]`];
  // ACRO first: it is the only alternative that can run through further periods ("a.k.a.a.k.a"), and when it
  // matches, no other alternative matches a longer string.
  const ABBREV4 = alt(
    ACRO,
    ...ABTITLE,
    ...['vs', 'Alex', 'Wm', 'Jos', 'Cie', 'a.k.a', 'cf', 'TREAS', 'Ph'].map(ci),
    ...ABCOMP2,
  );
  const ABBREV2 = `${ABBREV4}\\.`;
  const ACRONYM = `${ACRO}\\.`;
  const ABBREV3 = `${alt(...'ca|fig|figs|prop|no|nos|art|bldg|pp|op'.split('|').map(ci))}\\.`;
  /** Capitalised words after which an acronym's period also ends the sentence. */
  const SENT_STARTERS = [
    'About', 'According', 'Additionally', 'After', 'An', 'A', 'As', 'At', 'But', 'Earlier', 'He', 'Her', 'Here',
    'However', 'If', 'In', 'It', 'Last', 'Many', 'More', 'Mr.', 'Ms.', 'Now', 'Once', 'One', 'Other', 'Our', 'She',
    'Since', 'So', 'Some', 'Such', 'That', 'The', 'Their', 'Then', 'There', 'These', 'They', 'This', 'We', 'When',
    'While', 'What', 'Yet', 'You',
  ].map((w) => w[0] + ci(w.slice(1))); // prettier-ignore
  const PHONE =
    '(?:\\([0-9]{2,3}\\)[ \\u00A0]?|(?:\\+\\+?)?(?:[0-9]{2,4}[\\- \\u00A0])?[0-9]{2,4}[\\- \\u00A0])[0-9]{3,4}[\\- \\u00A0]?[0-9]{3,5}' +
    '|(?:(?:\\+\\+?)?[0-9]{2,4}\\.)?[0-9]{2,4}\\.[0-9]{3,4}\\.[0-9]{3,5}';
  const LESSTHAN = alt('<', ci('&lt;'));
  const GREATERTHAN = alt('>', ci('&gt;'));
  const LDOTS_ALTS = ['\\.{3,5}', '(?:\\.[ \\u00A0]){2,4}\\.', '[\\u0085\\u2026]'];
  const INSENTP = '[,;:\\u3001]';
  const QUOTES_ALTS = [
    APOS,
    "''",
    '[`\\u2018\\u2019\\u201A\\u201B\\u201C\\u201D\\u0091-\\u0094\\u201E\\u201F\\u2039\\u203A\\u00AB\\u00BB]{1,2}',
  ];
  const DBLQUOT = alt('"', ci('&quot;'));
  const TBSPEC_ALTS = [
    `-${alt(...['RRB', 'LRB', 'RCB', 'LCB', 'RSB', 'LSB'].map(ci))}-`,
    ci('C.D.s'),
    ci('pro-'),
    ci('anti-'),
    `${ci('S')}(?:&|${ci('&amp;')})${ci('P-500')}`,
    `${ci('S')}(?:&|${ci('&amp;')})${ci('Ls')}`,
    `${ci('Cap')}${APOS}[nN]`,
    `[cC]${APOS}${ci('est')}`,
  ];
  const SMILEY = "[<>]?[:;=][\\-o\\*']?[\\(\\)DPdpO\\\\{@\\|\\[\\]]";
  const ASIANSMILEY_ALTS = [
    // The specification writes "\[" here (a literal bracket), so this alternative matches e.g. "^.[^x=~<>]".
    '[\\^x=~<>]\\.\\[\\^[xX]=~<>\\]',
    "[\\-\\^x=~<>']_[\\-\\^x=~<>']",
    "\\([\\-\\^x=~<>'][_.]?[\\-\\^x=~<>']\\)",
    "\\([\\^x=~<>']-[\\^x=~<>'`]\\)",
  ];
  const MISCSYMBOL =
    '[+%&~\\^|\\\\\\u00A6\\u00A7\\u00A8\\u00A9\\u00AC\\u00AE\\u00AF\\u00B0-\\u00B3\\u00B4-\\u00BA\\u00D7\\u00F7\\u0387' +
    '\\u05BE\\u05C0\\u05C3\\u05C6\\u05F3\\u05F4\\u0600-\\u0603\\u0606-\\u060A\\u060C\\u0614\\u061B\\u061E\\u066A\\u066D' +
    '\\u0703-\\u070D\\u07F6\\u07F7\\u07F8\\u0964\\u0965\\u0E4F\\u1FBD\\u2016\\u2017\\u2020-\\u2023\\u2030-\\u2038\\u203B' +
    '\\u203E-\\u2042\\u2044\\u207A-\\u207F\\u208A-\\u208E\\u2100-\\u214F\\u2190-\\u21FF\\u2200-\\u2BFF\\u3012\\u30FB' +
    '\\uFF01-\\uFF0F\\uFF1A-\\uFF20\\uFF3B-\\uFF40\\uFF5B-\\uFF65]';

  /** First-character classes used only to skip rules that cannot match. */
  const F_ANY = '\\s\\S';
  const F_LETTER = `${CL}${LETTER_EXTRA}&`;
  const F_APOS = "'\\u0092\\u2019&";

  return [
    rule('c++', '[cC][+][+]', 'cC'),
    rule('c#', '[cCfF]#', 'cCfF'),
    rule('cannot', ci('cannot'), 'cC', (t) => emit(t.slice(0, 3), 3)),
    rule("'twas", `'${ci('twas')}`, "'", (t) => emit(t.slice(0, 2), 2)),
    rule("'tis", `'${ci('tis')}`, "'", (t) => emit(t.slice(0, 2), 2)),
    rule('gonna', alt(...['gonna', 'gotta', 'lemme', 'gimme', 'wanna'].map(ci)), 'gGlLwW', (t) =>
      emit(t.slice(0, 3), 3),
    ),
    rule('SGML', SGML, '<', (t) => same(t.replace(/ /g, '\u00A0'))),
    rule(
      'SPMDASH',
      alt(`&${alt(ci('MD'), ci('mdash'), ci('ndash'))};`, '[\\u0096\\u0097\\u2013\\u2014\\u2015]'),
      '&\\u0096\\u0097\\u2013\\u2014\\u2015',
      (t) => emit('--', t.length),
    ),
    rule('SPAMP', ci('&amp;'), '&', (t) => emit(normalizeAmp(t), t.length)),
    rule('SPPUNC', `&${alt(...'HT|TL|UR|LR|QC|QL|QR|odq|cdq'.split('|').map(ci), '#[0-9]+')};`, '&'),
    rule('WORD/REDAUX', `(${WORD})${REDAUX}`, F_LETTER, (t) => emit(removeSoftHyphens(t), t.length)),
    rule('SWORD/SREDAUX', `(${SWORD})${SREDAUX}`, 'A-Za-z\\u00AD', (t) =>
      emit(removeSoftHyphens(t), t.length),
    ),
    rule('WORD', WORD, F_LETTER, (t) => emit(removeSoftHyphens(t), t.length)),
    rule('APOWORD', APOWORD_ALTS, `${F_APOS}${CL}`),
    rule('APOWORD2', `([yY]${APOS})[${CL}]`, 'yY'),
    rule('FULLURL', FULLURL, 'hH'),
    rule('LIKELYURL', LIKELYURL_ALTS, F_ANY, same, '^ \\t\\n\\f\\r"<>|()'),
    rule('EMAIL', EMAIL, 'a-zA-Z0-9&<'),
    rule('TWITTER', TWITTER, '@#'),
    rule('REDAUX/', `(${REDAUX})[^A-Za-z]`, F_APOS, (t) => emit(latexQuotes(t, false), t.length)),
    rule('SREDAUX/', `(${SREDAUX})[^A-Za-z]`, 'nN', (t) => emit(latexQuotes(t, false), t.length)),
    rule('DATE', DATE, CD + '\\u07C0-\\u07C9'),
    rule('NUMBER', NUMBER, `${CD}\\u07C0-\\u07C9\\-+.:,\\u00AD\\u066B\\u066C`, (t) =>
      emit(removeSoftHyphens(t), t.length),
    ),
    rule(
      'SUBSUPNUM',
      SUBSUPNUM,
      '\\u207A\\u207B\\u208A\\u208B\\u2070\\u00B9\\u00B2\\u00B3\\u2074-\\u2079\\u2080-\\u2089',
    ),
    rule(
      'FRAC',
      FRAC,
      CD + '\\u07C0-\\u07C9',
      (t) => emit(t.replace(/ /g, '\u00A0'), t.length),
      `${CD}\\u07C0-\\u07C9 \\u00A0\\-\\\\/\\u2044`,
    ),
    rule('FRAC2', FRAC2, '\\u00BC\\u00BD\\u00BE\\u2153-\\u215E', (t) =>
      emit(FRACTION_CHARS[t] ?? t, t.length),
    ),
    rule('TBSPEC', TBSPEC_ALTS, '\\-cCpPaAsS', (t) => emit(normalizeAmp(t), t.length)),
    rule('THING3', THING3, 'A-Za-z0-9'),
    rule('DOLSIGN', DOLSIGN, 'A-Z$#'),
    rule('DOLSIGN2', DOLSIGN2, DOLSIGN2.slice(1, -1), (t) => emit(normalizeCurrency(t), t.length)),
    rule(
      'ACRONYM/starter',
      `(${ACRONYM})${SPACENLS}${alt(...SENT_STARTERS, SGML)}${SPACENL}`,
      'A-Za-z',
      (t) =>
        // "I." and the like: the letter alone, the period next time; otherwise the acronym with its period
        // and the period again as its own token.
        t.length === 2 ? emit(t.slice(0, 1), 1) : emit(t, t.length - 1),
    ),
    rule('ABBREV3/digit', `(${ABBREV3})${SPACENL}?[${CD}]`, 'cCfFpPnNaAbBoO'),
    rule('pty./ltd', `(${alt(`[pP][tT][eyEY]`, ci('co'))}\\.)${SPACE}${alt(ci('ltd'), ci('lim'))}`, 'pPcC'),
    rule('ABBREV1/SENTEND', `(${ABBREV1})${SENTEND}`, 'A-Za-z', (t) => emit(t, t.length - 1)),
    rule('ABBREV1/any2', `(${ABBREV1})[\\s\\S][\\s\\S]`, 'A-Za-z'),
    rule('ABBREV1', ABBREV1, 'A-Za-z', (t) => emit(t, t.length - 1)),
    rule('ABBREV2', ABBREV2, 'A-Za-z'),
    rule('ABBREV4/SPACE', `(${ABBREV4})${SPACE}`, 'A-Za-z'),
    rule('ACRO/SPACENL', `(${ACRO})${SPACENL}`, 'A-Za-z'),
    rule('TBSPEC2/SPACENL', `(${APOS}[0-9][0-9])${SPACENL}`, F_APOS),
    rule('FILENAME/', `(${FILENAME})${alt(SPACENL, '[.?!,]')}`, `${F_LETTER}${CD}\\u07C0-\\u07C9`),
    rule('WORD./INSENTP', `(${WORD}\\.)${INSENTP}`, F_LETTER, (t) => emit(removeSoftHyphens(t), t.length)),
    rule(
      'PHONE',
      PHONE,
      '0-9(+',
      (t) => emit(parens(t.replace(/ /g, '\u00A0')), t.length),
      '0-9 \\u00A0\\-().+',
    ),
    rule('DBLQUOT/', `(${DBLQUOT})[A-Za-z0-9$]`, '"&', (t) => emit(latexQuotes(t, true), t.length)),
    rule('DBLQUOT', DBLQUOT, '"&', (t) => emit(latexQuotes(t, false), t.length)),
    rule('DEL', '\\x7f', '\\x7f', (t) => ({ consume: t.length })),
    rule('LESSTHAN', LESSTHAN, '<&', (t) => emit('<', t.length)),
    rule('GREATERTHAN', GREATERTHAN, '>&', (t) => emit('>', t.length)),
    rule('SMILEY/', `(${SMILEY})[^A-Za-z0-9]`, '<>:;=', (t) => emit(parens(t), t.length)),
    rule('ASIANSMILEY', ASIANSMILEY_ALTS, "\\^x=~<>\\-'(", (t) => emit(parens(t), t.length)),
    rule('{', '\\{', '{', () => emit('-LCB-', 1)),
    rule('}', '\\}', '}', () => emit('-RCB-', 1)),
    rule('[', '\\[', '[', () => emit('-LSB-', 1)),
    rule(']', '\\]', '\\]', () => emit('-RSB-', 1)),
    rule('(', '\\(', '(', () => emit('-LRB-', 1)),
    rule(')', '\\)', ')', () => emit('-RRB-', 1)),
    rule('HYPHENS', '\\-+', '\\-', (t) => emit(t.length >= 3 && t.length <= 4 ? '--' : t, t.length)),
    rule('LDOTS', LDOTS_ALTS, '.\\u0085\\u2026', (t) => emit('...', t.length)),
    rule('FNMARKS', ['@+', '#+', '_+'], '@#_'),
    rule('ASTS', ['\\*+', '(?:\\\\\\*){1,3}'], '*\\\\'),
    rule('INSENTP', INSENTP, ',;:\\u3001'),
    rule('?!', '[?!]+', '?!'),
    rule(
      '.',
      '[.\\u00A1\\u00BF\\u037E\\u0589\\u061F\\u06D4\\u0700-\\u0702\\u07FA\\u3002]',
      '.\\u00A1\\u00BF\\u037E\\u0589\\u061F\\u06D4\\u0700-\\u0702\\u07FA\\u3002',
    ),
    rule('=', '=', '='),
    rule('/', '\\/', '/'),
    // HTHING needs the exhaustive longest match: "x-Canada-U.S.b." can take ACRO2's special form or not.
    rule(
      'HTHING./INSENTP',
      `(${HTHING}\\.)${INSENTP}`,
      'A-Za-z0-9',
      (t) => emit(removeSoftHyphens(t), t.length),
      HTHING_CHARS,
    ),
    rule('HTHING', HTHING, 'A-Za-z0-9', (t) => emit(removeSoftHyphens(t), t.length), HTHING_CHARS),
    rule('THING./INSENTP', `(${THING}\\.)${INSENTP}`, `${CL}${CD}`),
    rule('THING', THING, `${CL}${CD}`),
    rule('THINGA./INSENTP', `(${THINGA}\\.)${INSENTP}`, 'A-Z', (t) => emit(normalizeAmp(t), t.length)),
    rule('THINGA', THINGA, 'A-Z', (t) => emit(normalizeAmp(t), t.length)),
    rule("'/letter", `(')[A-Za-z][^ \\t\\n\\r\\u00A0]`, "'", (t) => emit(latexQuotes(t, true), t.length)),
    rule('REDAUX', REDAUX, F_APOS, (t) => emit(latexQuotes(t, false), t.length)),
    rule('SREDAUX', SREDAUX, 'nN', (t) => emit(latexQuotes(t, false), t.length)),
    rule(
      'QUOTES',
      QUOTES_ALTS,
      `${F_APOS}\`\\u2018-\\u201F\\u0091-\\u0094\\u2039\\u203A\\u00AB\\u00BB`,
      (t) => emit(latexQuotes(t, false), t.length),
    ),
    rule('FAKEDUCKFEET', ['<<', '>>'], '<>'),
    rule('MISCSYMBOL', MISCSYMBOL, MISCSYMBOL.slice(1, -1)),
    rule(
      'SPACES',
      alt('\\0', `${SPACE}+`, '[\\u200B\\u200E\\u200F\\uFEFF]'),
      `\\0${SPACE.slice(1, -1)}\\u200B\\u200E\\u200F\\uFEFF`,
      (t) => ({
        consume: t.length,
      }),
    ),
    rule('NEWLINE', NEWLINE, '\\r\\n\\u2028\\u2029\\u000B\\u000C\\u0085', (t) => emit(NL, t.length)),
    rule('&nbsp;', ci('&nbsp;'), '&', (t) => ({ consume: t.length })),
    // Anything else is untokenizable: deleted (CoreNLP's default "firstDelete" only logs it).
    rule('UNTOKENIZABLE', '[\\s\\S]', F_ANY, () => ({ consume: 1 })),
  ];
}

let RULES: Rule[] | undefined;
function rules(): Rule[] {
  RULES ??= buildRules();
  return RULES;
}

let SPACES: Rule | undefined;
const spacesRule = (): Rule => (SPACES ??= rules().find((r) => r.name === 'SPACES') as Rule);

/** Rules that can start at a given code unit, computed on first use. */
const rulesByFirst = new Map<number, Rule[]>();
function candidates(code: number): Rule[] {
  let list = rulesByFirst.get(code);
  if (list === undefined) {
    const ch = String.fromCharCode(code);
    list = rules().filter((r) => r.first.test(ch));
    rulesByFirst.set(code, list);
  }
  return list;
}

/** The longest match of `r` at `pos`: [total length, token text] or undefined. */
function matchRule(r: Rule, s: string, pos: number): [number, string] | undefined {
  let best: [number, string] | undefined;
  for (const re of r.res) {
    re.lastIndex = pos;
    const m = re.exec(s);
    if (m !== null && (best === undefined || m[0].length > best[0])) best = [m[0].length, m[1] ?? m[0]];
  }
  if (best !== undefined && r.exactLongest !== undefined) {
    // Backtracking returns the first match, not necessarily the longest: try every longer end too.
    const { anchored, alphabet } = r.exactLongest;
    alphabet.lastIndex = pos;
    const end = pos + (alphabet.exec(s)?.[0].length ?? 0);
    for (let e = end; e > pos + best[0]; e--) {
      const m = anchored.exec(s.slice(pos, e));
      if (m !== null) return [m[0].length, m[1] ?? m[0]];
    }
  }
  return best;
}

/**
 * Fast path for the most common token: ASCII letters followed by a space, a newline or the end. Every rule
 * that could match it or something longer yields the same token (WORD; ABBREV4/{SPACE} and ACRO/{SPACENL}
 * only add the space as trailing context), except the split assimilations.
 */
const FAST_WORD = /[A-Za-z]+(?=[ \n]|$)/y;
const ASSIMILATIONS = new Set(['cannot', 'gonna', 'gotta', 'lemme', 'gimme', 'wanna']);

/** Run the lexer over `text`: the tokens, with '*NL*' for each newline. */
export function ptbLex(text: string): string[] {
  const out: string[] = [];
  let pos = 0;
  while (pos < text.length) {
    if (text.charCodeAt(pos) === 0x20) {
      // Only the SPACES rule (and the catch-all) can start with a space.
      pos += (matchRule(spacesRule(), text, pos) as [number, string])[0];
      continue;
    }
    FAST_WORD.lastIndex = pos;
    const w = FAST_WORD.exec(text);
    if (w !== null && !ASSIMILATIONS.has(w[0].toLowerCase())) {
      out.push(w[0]);
      pos += w[0].length;
      continue;
    }
    let bestRule: Rule | undefined;
    let bestLen = 0;
    let bestText = '';
    for (const r of candidates(text.charCodeAt(pos))) {
      const m = matchRule(r, text, pos);
      if (m !== undefined && m[0] > bestLen) {
        bestRule = r;
        bestLen = m[0];
        bestText = m[1];
      }
    }
    if (bestRule === undefined) throw new Error(`ptbLex: no rule matches at ${pos}`); // the last rule matches anything
    const a = bestRule.act(bestText);
    if (a.token !== undefined) out.push(a.token);
    pos += a.consume;
  }
  return out;
}

/** pycocoevalcap's PUNCTUATIONS: tokens dropped after tokenization (compared after lower-casing). */
export const PTB_PUNCTUATIONS: ReadonlySet<string> = new Set([
  "''",
  "'",
  '``',
  '`',
  '-LRB-',
  '-RRB-',
  '-LCB-',
  '-RCB-',
  '.',
  '?',
  '!',
  ',',
  ':',
  '-',
  '--',
  '...',
  ';',
]);

// eslint-disable-next-line no-control-regex -- \v and \f are line terminators for the Java lexer
const LINE_TERMINATORS = /[\n\r\u000B\u000C\u2028\u2029]/g;

/**
 * Tokenize captions as pycocoevalcap's PTBTokenizer.tokenize does for one side (all references, or all
 * candidates), in the given order: one output string per input caption, space-joined lower-case tokens
 * without the punctuation list. The captions are lexed as one '\n'-joined text because a few rules look
 * across the line end (an acronym at the end of a caption followed by a capitalised "A ..." caption).
 */
export function ptbTokenizeBatch(captions: readonly string[]): string[] {
  // The toolkit replaces '\n' in a caption by a space; the other line terminators would break its
  // line alignment, so they become spaces too (see the module comment).
  const text = captions.map((c) => c.replace(LINE_TERMINATORS, ' ')).join('\n');
  const lines: string[][] = [[]];
  for (const tok of ptbLex(text)) {
    if (tok === NL) lines.push([]);
    else lines[lines.length - 1].push(tok.toLowerCase());
  }
  if (lines.length !== captions.length) {
    throw new Error(`ptbTokenizeBatch: ${lines.length} lines for ${captions.length} captions`);
  }
  return lines.map((toks) =>
    pyRstrip(toks.join(' '))
      .split(' ')
      .filter((w) => !PTB_PUNCTUATIONS.has(w))
      .join(' '),
  );
}

/** One caption on its own (no neighbouring line for context). */
export function ptbTokenize(caption: string): string {
  return ptbTokenizeBatch([caption])[0];
}
